//! Which kernel version each input is of: the source tree (its Makefile's `VERSION`,
//! `PATCHLEVEL`, `SUBLEVEL` and `EXTRAVERSION`), the kernel config (the `# Linux/ARCH VERSION
//! Kernel Configuration` line Kconfig writes at its top) and vmlinux (its `linux_banner`,
//! `Linux version RELEASE (...)`, which `/proc/version` prints). A source tree of another
//! release than the kernel it is to patch builds objects that do not match the running code,
//! so the inputs phase compares them before any work.

use std::fs;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

use super::inputs::{read_file, InputError};

/// The version a source tree's Makefile declares, as Kbuild's `KERNELVERSION` spells it
/// (`6.12.117`, `6.13.0-rc1`); an empty string when the Makefile has no `VERSION`.
pub fn makefile_version(makefile: &str) -> String {
    let field = |key| makefile_field(makefile, key);
    let version = field("VERSION");
    if version.is_empty() {
        return String::new();
    }
    let mut text = version;
    let patchlevel = field("PATCHLEVEL");
    if !patchlevel.is_empty() {
        text = format!("{text}.{patchlevel}");
        let sublevel = field("SUBLEVEL");
        if !sublevel.is_empty() {
            text = format!("{text}.{sublevel}");
        }
    }
    text + &field("EXTRAVERSION")
}

/// The value of a `KEY = value` line of a Makefile, or an empty string.
fn makefile_field(makefile: &str, key: &str) -> String {
    makefile
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim_start()
                .strip_prefix('=')
                .map(str::trim)
        })
        .unwrap_or("")
        .to_string()
}

/// The tree at `source`'s `VERSION.PATCHLEVEL.SUBLEVEL` (what a release must start with) and
/// its whole version, `EXTRAVERSION` included.
pub fn source_version(source: &Path) -> Result<(String, String), InputError> {
    let makefile = read_file(
        &source.join("Makefile"),
        "kernel Makefile",
        "pass a kernel source tree with --sourcedir",
    )?;
    let makefile = String::from_utf8_lossy(&makefile);
    let field = |key| makefile_field(&makefile, key);
    let numbers = format!(
        "{}.{}.{}",
        field("VERSION"),
        field("PATCHLEVEL"),
        field("SUBLEVEL")
    );
    Ok((numbers, makefile_version(&makefile)))
}

/// The kernel version a config was made for, from Kconfig's header line
/// (`# Linux/x86 6.12.117 Kernel Configuration`); None for a config without it.
pub fn config_version(config: &str) -> Option<String> {
    config.lines().take(20).find_map(|line| {
        let rest = line.strip_prefix("# Linux/")?;
        let rest = rest.strip_suffix(" Kernel Configuration")?;
        let (_arch, version) = rest.split_once(' ')?;
        let version = version.trim();
        (!version.is_empty()).then(|| version.to_string())
    })
}

/// The release a vmlinux was built as, from its `linux_banner` (`Linux version 6.12.117
/// (...)`); None when the file has no such symbol or it is not a readable ELF file (the
/// symbols phase reports that).
pub fn vmlinux_release(vmlinux: &Path) -> Option<String> {
    banner_release(&vmlinux_banner(vmlinux)?)
}

/// The text of a vmlinux's `linux_banner`.
pub fn vmlinux_banner(vmlinux: &Path) -> Option<Vec<u8>> {
    let file = fs::File::open(vmlinux).ok()?;
    let cache = object::read::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let banner = elf.symbols().find(|s| s.name() == Ok("linux_banner"))?;
    let section = elf.section_by_index(banner.section_index()?).ok()?;
    let size = banner.size().clamp(16, 512);
    let bytes = section.data_range(banner.address(), size).ok()??;
    Some(bytes.to_vec())
}

/// `6.12.117+deb12-amd64` of `Linux version 6.12.117+deb12-amd64 (debian-kernel@...) ...`.
pub fn banner_release(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes.split(|&b| b == 0).next()?).into_owned();
    let release = text.strip_prefix("Linux version ")?.split(' ').next()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// Whether a banner names a release of `version`: its release does, or one of its words does,
/// as distributions that name releases by ABI write the version at the end (`Linux version
/// 6.1.0-57-amd64 (...) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)`).
pub fn banner_is_of(bytes: &[u8], version: &str) -> bool {
    let text = String::from_utf8_lossy(bytes.split(|&b| b == 0).next().unwrap_or(&[]));
    text.split_whitespace()
        .skip(2)
        .any(|word| release_of(word, version))
}

/// Whether `release` is a release of the tree whose version is `version`: the version
/// followed by nothing or by anything but a digit (`6.12.11` is not of `6.12.1`).
pub fn release_of(release: &str, version: &str) -> bool {
    release
        .strip_prefix(version)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Refuses a source tree whose Makefile's version is not the config's or vmlinux's: the
/// objects it gives would not be the running kernel's, however well they diff.
pub fn check_source_matches(
    source: &Path,
    config_path: &Path,
    config: &str,
    vmlinux: Option<&Path>,
) -> Result<(), InputError> {
    let (_, version) = source_version(source)?;
    let mismatch = |what: String, other: String| InputError::VersionMismatch {
        tree: source.to_path_buf(),
        source_version: version.clone(),
        what,
        other,
    };
    if let Some(config_version) = config_version(config) {
        if config_version != version {
            return Err(mismatch(
                format!("the kernel config {}", config_path.display()),
                config_version,
            ));
        }
    }
    if let Some(vmlinux) = vmlinux {
        if let Some(banner) = vmlinux_banner(vmlinux) {
            if let Some(release) = banner_release(&banner) {
                if !banner_is_of(&banner, &version) {
                    return Err(mismatch(format!("vmlinux {}", vmlinux.display()), release));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_makefile_version_is_kbuilds_kernelversion() {
        let makefile =
            "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = x\n";
        assert_eq!(makefile_version(makefile), "6.12.117");
        let rc = "VERSION = 6\nPATCHLEVEL = 13\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n";
        assert_eq!(makefile_version(rc), "6.13.0-rc1");
        assert_eq!(makefile_version("all:\n"), "");
    }

    #[test]
    fn the_config_and_the_banner_name_their_version() {
        let config = "#\n# Automatically generated file; DO NOT EDIT.\n\
                      # Linux/x86 6.12.117 Kernel Configuration\n#\nCONFIG_X=y\n";
        assert_eq!(config_version(config).as_deref(), Some("6.12.117"));
        assert_eq!(config_version("CONFIG_LIVEPATCH=y\n"), None);
        assert_eq!(
            banner_release(b"Linux version 6.12.117+deb12-amd64 (debian-kernel@lists) #1\n\0x")
                .as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(banner_release(b"Linux 6.12\0"), None);
        let debian_6_1 = b"Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) \
            (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) \
            #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)\n\0";
        assert_eq!(
            banner_release(debian_6_1).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert!(banner_is_of(debian_6_1, "6.1.192"));
        assert!(!banner_is_of(debian_6_1, "6.1.19"));
        assert!(banner_is_of(
            b"Linux version 6.12.117+deb12-amd64 (x) #1\0",
            "6.12.117"
        ));
        assert!(release_of("6.12.117+deb12-amd64", "6.12.117"));
        assert!(release_of("6.12.117", "6.12.117"));
        assert!(!release_of("6.12.1170", "6.12.117"));
        assert!(!release_of("6.1.0", "6.12.117"));
    }
}
