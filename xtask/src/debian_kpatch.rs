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

/// The suite that has the package, signed by a key of Debian 12's `debian-archive-keyring`.
const SOURCES: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                       http://deb.debian.org/debian trixie main\n";

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
    let apt = cache.join("apt");
    for dir in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt.join(dir))
            .with_context(|| format!("cannot create {}", apt.join(dir).display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(&sources, SOURCES)
        .with_context(|| format!("cannot write {}", sources.display()))?;
    let options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_string(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "APT::Sandbox::User=root".to_string(),
    ];
    let options: Vec<String> = options
        .iter()
        .flat_map(|option| ["-o".to_string(), option.clone()])
        .collect();
    eprintln!(
        "xtask: downloading Debian's kpatch package (trixie) into {}",
        cache.display()
    );
    let update_options = options.clone();
    cmd!(sh, "apt-get -q {update_options...} update")
        .quiet()
        .ignore_stdout()
        .run()
        .context("cannot read trixie's package list with apt-get")?;
    let debs = apt.join("debs");
    {
        let _dir = sh.push_dir(&debs);
        cmd!(sh, "apt-get -q {options...} download kpatch")
            .quiet()
            .ignore_stdout()
            .run()
            .context("cannot download Debian's kpatch package with apt-get")?;
    }
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
