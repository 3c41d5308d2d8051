//! `cargo xtask ci`: the whole check a clean checkout must pass, in the order CI runs it.

use anyhow::Result;
use xshell::{cmd, Shell};

pub fn run(_args: &[String]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    cmd!(sh, "cargo fmt --all -- --check").run()?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --all-features -- -D warnings"
    )
    .run()?;
    cmd!(sh, "cargo test --workspace --all-features").run()?;
    Ok(())
}
