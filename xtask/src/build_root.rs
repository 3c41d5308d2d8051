//! The root file systems `kpatch-rs build --chroot` runs compiles and links in, made once
//! with `debootstrap` into `~/.cache/kpatch-rs/root-SUITE/` and kept: a Debian release with
//! the compiler and build dependencies of its kernels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// What a Debian kernel's out-of-tree build needs beyond a minimal system: the compiler and
/// binutils, make, Kconfig's parser generators, the host tools' libraries (objtool, modpost,
/// sign-file), pahole (which Kconfig asks for the version of, for BTF), xz, and python3
/// (libbpf's generated header, for `resolve_btfids`).
pub const PACKAGES: &str =
    "gcc,make,bc,bison,flex,libelf-dev,libssl-dev,dwarves,kmod,xz-utils,perl,python3";

/// The root of `suite`, made when the cache has none (a stamp with the package list marks a
/// finished one; another list makes it again).
pub fn ensure(sh: &Shell, suite: &str) -> Result<PathBuf> {
    let cache = crate::cache_dir(&format!("root-{suite}"))?;
    let root = cache.join("root");
    let stamp = cache.join(".made");
    let made = std::fs::read_to_string(&stamp).unwrap_or_default();
    if made == PACKAGES && root.join("usr/bin/gcc").exists() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&cache)?;
    eprintln!(
        "xtask: making a {suite} build root with debootstrap in {}",
        root.display()
    );
    let log = cache.join("debootstrap.log");
    let include = format!("--include={PACKAGES}");
    let output = cmd!(
        sh,
        "debootstrap --variant=minbase {include} {suite} {root} http://deb.debian.org/debian"
    )
    .quiet()
    .ignore_status()
    .output()?;
    std::fs::write(
        &log,
        [output.stdout.as_slice(), output.stderr.as_slice()].concat(),
    )?;
    if !output.status.success() {
        anyhow::bail!(
            "debootstrap of {suite} failed ({}); its log: {}",
            output.status,
            log.display()
        );
    }
    let gcc = cmd!(sh, "chroot {root} gcc --version")
        .read()
        .context("the new build root has no working gcc")?;
    eprintln!(
        "xtask: {suite} build root ready: {}",
        gcc.lines().next().unwrap_or("")
    );
    std::fs::write(&stamp, PACKAGES)?;
    Ok(root)
}
