//! Developer automation behind `cargo xtask`: dependencies, kernels, QEMU tests, CI.
//!
//! CI calls `cargo xtask ci` and nothing else.

mod ci;
mod fixtures;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci        everything CI checks: fmt, clippy, unit tests, QEMU tests
  fixtures  build the kernel object pairs of fixtures/kernel/*.patch for the diff tests
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "ci" => ci::run(rest),
        "fixtures" => fixtures::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root: xtask lives one level below it.
pub fn project_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}
