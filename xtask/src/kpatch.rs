//! The kpatch-rs binary the harness runs: built once per run from this workspace, and the
//! `kpatch-rs build` command line for a test kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::KernelDirs;

/// Builds `kpatch-rs` from this workspace, once per run, and returns the binary.
pub fn build_kpatch_rs(sh: &Shell) -> Result<PathBuf> {
    let root = crate::project_root();
    let _dir = sh.push_dir(&root);
    eprintln!("xtask: building kpatch-rs (cargo build --release -p kpatch-rs)");
    cmd!(sh, "cargo build --release --quiet -p kpatch-rs")
        .run()
        .context("cannot build kpatch-rs for the cases")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("release/kpatch-rs");
    if !binary.is_file() {
        bail!(
            "cargo built kpatch-rs but {} is not there",
            binary.display()
        );
    }
    Ok(binary)
}

/// `kpatch-rs build --name NAME --output OUTPUT_DIR` against the test kernel `kernel`, with
/// the make variables its toolchain needs; `OUTPUT_DIR` is emptied first. The caller adds the
/// options and patches.
pub fn kpatch_build_command(
    kpatch: &Path,
    kernel: &KernelDirs,
    name: &str,
    output_dir: &Path,
) -> Result<Command> {
    if output_dir.exists() {
        std::fs::remove_dir_all(output_dir)
            .with_context(|| format!("cannot remove {}", output_dir.display()))?;
    }
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("cannot create {}", output_dir.display()))?;
    let mut command = Command::new(kpatch);
    command
        .arg("build")
        .arg("--sourcedir")
        .arg(&kernel.source)
        .arg("--vmlinux")
        .arg(kernel.build.join("vmlinux"))
        .args(["--name", name, "--output"])
        .arg(output_dir);
    // A Rust-core kernel was built with Debian's rustc and bindgen: so is its livepatch.
    for var in &kernel.make_vars {
        command.args(["--make-var", var]);
    }
    Ok(command)
}
