//! Debian's `kpatch` utility (`/usr/sbin/kpatch`, a bash script from the package `kpatch`),
//! for the cases that check that modules built by kpatch-rs load with it too.
//!
//! Debian 12 has no `kpatch` package (it is in Debian 13, trixie), so the package is
//! downloaded with apt-get from trixie's archive through a private apt state under the cache
//! (its own sources list and package lists; the machine's apt configuration is not touched)
//! and unpacked with `dpkg-deb -x`; nothing is installed. Once unpacked, it is kept.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::suite_apt::SuiteApt;

/// The script in the unpacked package.
const SCRIPT: &str = "usr/sbin/kpatch";

/// The unpacked `kpatch` script, downloaded first when the cache has none.
pub fn ensure(sh: &Shell) -> Result<PathBuf> {
    let cache = crate::cache_dir("debian-kpatch")?;
    let root = cache.join("root");
    let script = root.join(SCRIPT);
    if root.join(".unpacked").exists() && script.is_file() {
        return Ok(script);
    }
    eprintln!(
        "xtask: downloading Debian's kpatch package (trixie) into {}",
        cache.display()
    );
    let apt = SuiteApt::new(sh, &cache, "trixie")?;
    let debs = cache.join("apt/debs");
    std::fs::create_dir_all(&debs)?;
    apt.download(sh, "kpatch", &debs)?;
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("kpatch_") && name.ends_with(".deb"))
        })
        .max()
        .context("apt-get download left no kpatch_*.deb")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    cmd!(sh, "dpkg-deb -x {deb} {root}")
        .run()
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    if !script.is_file() {
        anyhow::bail!("{} has no {SCRIPT}", deb.display());
    }
    std::fs::write(root.join(".unpacked"), "")?;
    eprintln!("xtask: Debian's kpatch from {}", deb.display());
    Ok(script)
}
