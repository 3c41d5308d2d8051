//! What the tests that run `kpatch-rs build` against the project's cached 6.12 kernel share:
//! the kernel's directories (from `KPATCH_RS_KERNEL_SOURCE` and `KPATCH_RS_KERNEL_BUILD`,
//! which `cargo xtask ci` sets), the build command, the shared patches.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Kernel {
    pub source: PathBuf,
    pub build: PathBuf,
}

/// The test kernel, or None after saying why (a failure under CI).
pub fn kernel() -> Option<Kernel> {
    let source = std::env::var_os("KPATCH_RS_KERNEL_SOURCE").map(PathBuf::from);
    let build = std::env::var_os("KPATCH_RS_KERNEL_BUILD").map(PathBuf::from);
    match (source, build) {
        (Some(source), Some(build)) => Some(Kernel { source, build }),
        _ => {
            kpatch_support::skip_unless_ci(
                "KPATCH_RS_KERNEL_SOURCE and KPATCH_RS_KERNEL_BUILD are not set \
                 (cargo xtask kernel --print-dirs)",
            );
            None
        }
    }
}

impl Kernel {
    /// `kpatch-rs build` against this kernel into `output`, with `extra` arguments and the
    /// given patches.
    pub fn command(&self, output: &Path, extra: &[&str], patches: &[PathBuf]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"));
        command
            .arg("build")
            .arg("--sourcedir")
            .arg(&self.source)
            .arg("--vmlinux")
            .arg(self.build.join("vmlinux"))
            .arg("--output")
            .arg(output)
            .args(extra)
            .args(patches);
        command
    }
}

/// A patch of `fixtures/patches`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/patches")
        .join(name)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
