//! `cargo xtask deps`: installs, with apt-get, the Debian packages that building the test
//! kernel and running it in QEMU need. Asks dpkg first, so a second call is instant.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Every package the harness uses, with the reason next to it.
pub const PACKAGES: &[&str] = &[
    // The kernel source and its build.
    "linux-source-6.12",
    // Debian 12's default kernel: the 6.1 test kernel and `distro-test --kernel 6.1`.
    "linux-source-6.1",
    "gcc",
    "make",
    "libc6-dev", // also the static libc for the selftests' test_klp-call_getpid
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    // kpatch-rs build: patch(1) for the patched tree, binutils for ld and readelf.
    "patch",
    "binutils",
    // The compile cache behind `--make-var CC="ccache gcc"` (kpatch-rs/tests/ccache.rs).
    "ccache",
    // pahole: a distribution config with CONFIG_DEBUG_INFO_BTF keeps it only when pahole is
    // there, and dropping it changes struct module (see `cargo xtask distro-test`).
    "dwarves",
    // The guest: emulator, initramfs, and the tools the upstream selftests call.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",      // insmod, rmmod, modinfo
    "procps",    // sysctl --values
    "diffutils", // diff, used by the selftests to show a mismatch
    // The Rust-core kernel (CONFIG_RUST): Debian's rustc with its library sources, and the
    // libclang that bindgen loads. The rustup toolchain keeps building kpatch-rs itself.
    "rustc-web",
    "rust-web-src",
    "libclang-dev",
    // `kpatch-rs package --deb` and `cargo xtask package-test`: dpkg-deb (dpkg is essential),
    // a Debian root made by debootstrap, gzip for its initramfs, and systemd-analyze verify.
    "debootstrap",
    "rpm", // rpmbuild, for `kpatch-rs package --rpm`
    "gzip",
    "systemd",
    // `cargo xtask fuzz`: libfuzzer-sys compiles libFuzzer, which is C++.
    "g++",
];

/// Cargo-installed tools: (crate, binary). The kernel's Rust build needs bindgen, which
/// Debian 12 packages in a version too old for Linux 6.12's Rust support.
const CARGO_TOOLS: &[(&str, &str)] = &[("bindgen-cli", "bindgen")];

fn ensure_cargo_tools(sh: &Shell) -> Result<()> {
    for (krate, binary) in CARGO_TOOLS {
        let Some(home) = std::env::var_os("HOME") else {
            bail!("cannot install {krate}: HOME is not set");
        };
        let path = std::path::Path::new(&home).join(".cargo/bin").join(binary);
        if path.is_file() {
            continue;
        }
        eprintln!("deps: cargo install {krate} --locked");
        cmd!(sh, "cargo install {krate} --locked")
            .run()
            .with_context(|| format!("cannot install {krate} with cargo"))?;
    }
    Ok(())
}

/// Rust targets beyond the host's: core-patch's algorithm must build for a bare-metal target,
/// the way the kernel compiles it (only `core`).
const RUST_TARGETS: &[&str] = &["x86_64-unknown-none"];

fn ensure_rust_targets(sh: &Shell) -> Result<()> {
    let installed = cmd!(sh, "rustup target list --installed")
        .read()
        .context("cannot ask rustup for the installed targets")?;
    for target in RUST_TARGETS {
        if !installed.lines().any(|line| line.trim() == *target) {
            eprintln!("deps: adding Rust target {target}");
            cmd!(sh, "rustup target add {target}")
                .run()
                .with_context(|| format!("cannot add Rust target {target}"))?;
        }
    }
    Ok(())
}

/// `cargo xtask deps`
pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask deps` takes no arguments, got `{arg}`");
    }
    let sh = Shell::new()?;
    ensure_packages(&sh)
}

/// Installs what is missing from [`PACKAGES`], and the Rust targets the tests build for.
pub fn ensure_packages(sh: &Shell) -> Result<()> {
    ensure_rust_targets(sh)?;
    let missing = missing_packages(sh)?;
    if missing.is_empty() {
        eprintln!("deps: all {} packages are installed", PACKAGES.len());
        return ensure_cargo_tools(sh);
    }
    eprintln!("deps: installing {}", missing.join(" "));
    let uid = cmd!(sh, "id -u").read().context("cannot run id -u")?;
    // Not root: go through sudo, which must then be allowed to run apt-get.
    let (program, sudo_args): (&str, &[&str]) = if uid.trim() == "0" {
        ("apt-get", &[])
    } else {
        ("sudo", &["apt-get"])
    };
    let missing_args = missing.clone();
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "{program} {sudo_args...} update -q")
        .run()
        .context("cannot update the apt package lists")?;
    cmd!(
        sh,
        "{program} {sudo_args...} install -y -q --no-install-recommends {missing_args...}"
    )
    .run()
    .with_context(|| format!("cannot install {}", missing.join(" ")))?;
    let still_missing = missing_packages(sh)?;
    if !still_missing.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still_missing.join(" ")
        );
    }
    // After apt: bindgen-cli builds against libclang-dev.
    ensure_cargo_tools(sh)
}

fn missing_packages(sh: &Shell) -> Result<Vec<String>> {
    // dpkg-query exits 1 when a package is unknown to dpkg; the listing of the others is still
    // complete, so the status is ignored and the output judged.
    let format = "${Package}\t${db:Status-Abbrev}\n";
    let output = cmd!(sh, "dpkg-query -W -f={format} {PACKAGES...}")
        .ignore_status()
        .ignore_stderr()
        .read()
        .context("cannot run dpkg-query; this harness needs a Debian system")?;
    Ok(not_installed(PACKAGES, &output))
}

/// The packages of `wanted` that the dpkg-query listing does not show as installed (`ii`).
fn not_installed(wanted: &[&str], listing: &str) -> Vec<String> {
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once('\t')?;
            // Multi-arch packages are listed as name:arch.
            let name = name.split(':').next().unwrap_or(name);
            status.starts_with("ii").then_some(name)
        })
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(listing: &str, expected_missing: &[&str]) {
        assert_eq!(not_installed(&["a", "b", "c"], listing), expected_missing);
    }

    #[test]
    fn reads_dpkg_status() {
        check("a\tii \nb\tii \nc\tii \n", &[]);
        check("a\tii \nc\tii \n", &["b"]);
        check("a\trc \nb\tii \nc\tun \n", &["a", "c"]);
        check("a:amd64\tii \nb\tii \nc\tiF \n", &["c"]);
        check("", &["a", "b", "c"]);
    }
}
