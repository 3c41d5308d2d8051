//! `cargo xtask package-test`: `kpatch-rs package --deb` proven on a Debian system.
//!
//! The packages are the tool's (`kpatch-rs package --deb --tool`, from the release binary) and
//! the `livepatch-cmdline.ko` that `cargo xtask distro-test` built for Debian's 6.12 kernel.
//! A Debian 12 root with systemd (debootstrap, cached in `~/.cache/kpatch-rs/package-test/`)
//! is copied, and in a chroot the packages are installed with dpkg beside Debian's real
//! `linux-image-RELEASE-unsigned` (the livepatch package's Depends must be met by it), the
//! unit is checked with `systemd-analyze verify` and `systemctl is-enabled`. The root then
//! boots as an initramfs in QEMU with Debian's own vmlinuz and `rdinit=/lib/systemd/systemd`,
//! twice:
//! - a plain boot: kpatch-rs.service has loaded the livepatch (its /proc/cmdline is patched);
//!   `dpkg -r` of the livepatch's package unloads it and removes the module, `dpkg -r` of the
//!   tool package disables the unit;
//! - a boot with `kpatch.enable=0`: the unit's condition fails and nothing is loaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// What debootstrap installs beyond minbase: an init, module tools, and what Debian's kernel
/// image package depends on.
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,udev,kmod,initramfs-tools";
/// The longest one boot may take under TCG before it counts as hung.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// The script the guest's package-test.service runs after kpatch-rs.service; its output goes
/// to the second serial port. `pkgtest.phase=` on the kernel command line picks the checks.
const GUEST_SCRIPT: &str = r#"#!/bin/sh
exec >/dev/ttyS1 2>&1
release=$(uname -r)
package=kpatch-rs-patch-cmdline-$release
phase=$(sed -n 's/.*pkgtest\.phase=\([a-z]*\).*/\1/p' /proc/cmdline)
fail() { echo "PKGTEST-FAIL $phase: $*"; systemctl poweroff --no-block; exit 1; }
echo "PKGTEST-BEGIN $phase $release"
systemctl status --no-pager kpatch-rs.service
journalctl --no-pager -o cat -u kpatch-rs.service
case "$phase" in
boot)
    systemctl is-active kpatch-rs.service || fail "kpatch-rs.service is not active"
    [ "$(cat /sys/kernel/livepatch/livepatch_cmdline/enabled 2>/dev/null)" = 1 ] ||
        fail "livepatch_cmdline is not enabled after boot"
    grep -q ' kpatch-rs-distro$' /proc/cmdline || fail "/proc/cmdline is not patched"
    kpatch-rs list
    dpkg -r "$package" || fail "dpkg -r $package failed"
    [ ! -e /sys/kernel/livepatch/livepatch_cmdline ] || fail "still a livepatch after dpkg -r"
    ! grep -q '^livepatch_cmdline ' /proc/modules || fail "the module is still loaded"
    ! grep -q kpatch-rs-distro /proc/cmdline || fail "/proc/cmdline is still patched"
    [ ! -e "/var/lib/kpatch-rs/$release/livepatch-cmdline.ko" ] || fail "the module file is left"
    kpatch-rs list
    dpkg -r kpatch-rs || fail "dpkg -r kpatch-rs failed"
    ! systemctl is-enabled kpatch-rs.service || fail "kpatch-rs.service is still enabled"
    [ ! -e /usr/bin/kpatch-rs ] || fail "/usr/bin/kpatch-rs is left"
    ;;
disabled)
    grep -qw 'kpatch.enable=0' /proc/cmdline || fail "kpatch.enable=0 is not on the command line"
    [ "$(systemctl show -P ConditionResult kpatch-rs.service)" = no ] ||
        fail "kpatch-rs.service's condition did not stop it"
    [ ! -e /sys/kernel/livepatch/livepatch_cmdline ] || fail "loaded despite kpatch.enable=0"
    ! grep -q kpatch-rs-distro /proc/cmdline || fail "/proc/cmdline is patched"
    ;;
*)
    fail "unknown phase"
    ;;
esac
echo "PKGTEST-PASS $phase"
systemctl poweroff --no-block
"#;

const GUEST_UNIT: &str = "\
[Unit]
Description=kpatch-rs package test
After=kpatch-rs.service systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/package-test

[Install]
WantedBy=multi-user.target
";

pub fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        bail!("`cargo xtask package-test` takes no arguments, got `{arg}`");
    }
    let sh = Shell::new()?;
    let project = crate::project_root();
    let distro = crate::distro::ensure_distro(&sh)?;
    let release = crate::distro::DEBIAN_6_12.release;
    let module = project.join("target/distro-6.12/vmlinux/livepatch-cmdline.ko");
    if !module.is_file() {
        bail!(
            "{} is missing: `cargo xtask distro-test` builds it (CI runs it first)",
            module.display()
        );
    }
    let image_deb = std::fs::read_dir(distro.cache.join("debs"))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("linux-image-{release}-unsigned_")))
        })
        .context("Debian's kernel image package is not in the distro cache")?;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;

    let work = project.join("target/package-test");
    let _ = std::fs::remove_dir_all(&work);
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let tool_deb = cmd!(sh, "{kpatch} package --deb --tool -o {debs}").read()?;
    let patch_deb = cmd!(sh, "{kpatch} package --deb {module} -o {debs}").read()?;
    println!("package-test: built {tool_deb} and {patch_deb}");

    let cached = debian_root(&sh)?;
    let root = work.join("root");
    cmd!(sh, "cp -a {cached} {root}").run()?;
    chroot_install(
        &sh,
        &root,
        &[&image_deb, Path::new(&tool_deb), Path::new(&patch_deb)],
    )?;
    println!("package-test: chroot: installed with dpkg, systemd-analyze verify accepted kpatch-rs.service, enabled");

    // Compressed, and the unpacked copy removed: the machine's disk is shared.
    let initramfs = work.join("root.cpio.gz");
    let root_arg = &root;
    cmd!(
        sh,
        "sh -c 'cd \"$1\" && find . -path ./var/cache/apt/archives -prune -o -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"' pack {root_arg} {initramfs}"
    )
    .run()
    .context("cannot pack the Debian root with cpio")?;
    std::fs::remove_dir_all(&root)?;
    let size = std::fs::metadata(&initramfs)?.len();
    println!(
        "package-test: the root as a gzip initramfs: {} MiB",
        size >> 20
    );

    let mut failed = Vec::new();
    for (phase, extra) in [("boot", ""), ("disabled", " kpatch.enable=0")] {
        let started = Instant::now();
        let result = boot(&distro.vmlinuz, &initramfs, &work, phase, extra);
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(output) => {
                println!("ok   package-test {phase} ({seconds:.0} s)");
                for line in output.lines() {
                    println!("    {line}");
                }
            }
            Err(error) => {
                println!("FAIL package-test {phase} ({seconds:.0} s): {error:#}");
                failed.push(phase);
            }
        }
    }
    std::fs::remove_file(&initramfs)?;
    if !failed.is_empty() {
        bail!("package-test failed: {}", failed.join(", "));
    }
    println!("package-test: passed (chroot install, boot-time load and removal, kpatch.enable=0)");
    Ok(())
}

/// The cached Debian 12 root, made by debootstrap once.
fn debian_root(sh: &Shell) -> Result<PathBuf> {
    let cache = crate::cache_dir("package-test")?;
    let root = cache.join("root-bookworm");
    if root.join(".complete").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&cache)?;
    let partial = cache.join(format!("root-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "package-test: debootstrap of Debian 12 into {}",
        root.display()
    );
    cmd!(
        sh,
        "debootstrap --variant=minbase --include={ROOT_PACKAGES} bookworm {partial} http://deb.debian.org/debian"
    )
    .run()
    .context("debootstrap failed (cargo xtask deps installs it; deb.debian.org must be reachable)")?;
    cmd!(sh, "chroot {partial} apt-get clean").run()?;
    std::fs::write(partial.join(".complete"), "")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&partial, &root)?;
    Ok(root)
}

/// Installs `debs` in the chroot `root`, checks the unit, and enables the guest's test unit.
/// /proc is mounted for the time of it (systemctl and dpkg's scripts read it).
fn chroot_install(sh: &Shell, root: &Path, debs: &[&Path]) -> Result<()> {
    let tmp = root.join("tmp/debs");
    std::fs::create_dir_all(&tmp)?;
    let mut inside = Vec::new();
    for deb in debs {
        let name = deb.file_name().context("a .deb has no name")?;
        std::fs::copy(deb, tmp.join(name))?;
        inside.push(format!("/tmp/debs/{}", name.to_string_lossy()));
    }
    std::fs::create_dir_all(root.join("usr/local/sbin"))?;
    std::fs::write(root.join("usr/local/sbin/package-test"), GUEST_SCRIPT)?;
    crate::guest::make_executable(&root.join("usr/local/sbin/package-test"))?;
    std::fs::write(
        root.join("etc/systemd/system/package-test.service"),
        GUEST_UNIT,
    )?;
    let proc = root.join("proc");
    cmd!(sh, "mount -t proc proc {proc}").run()?;
    let result = (|| -> Result<()> {
        // The guest boots its kernel without an initramfs of its own.
        cmd!(sh, "chroot {root} dpkg -i {inside...}")
            .env("INITRD", "No")
            .run()
            .context("dpkg -i in the chroot failed")?;
        let unit = "/usr/lib/systemd/system/kpatch-rs.service";
        cmd!(sh, "chroot {root} systemd-analyze verify --man=no {unit}")
            .run()
            .context("systemd-analyze verify rejected kpatch-rs.service")?;
        let enabled = cmd!(sh, "chroot {root} systemctl is-enabled kpatch-rs.service").read()?;
        if enabled.trim() != "enabled" {
            bail!("kpatch-rs.service is {enabled} after dpkg -i, not enabled");
        }
        cmd!(sh, "chroot {root} systemctl enable package-test.service").run()?;
        Ok(())
    })();
    let unmounted = cmd!(sh, "umount {proc}").run();
    result?;
    unmounted?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// Boots the root once and returns the test script's output, or why it failed.
fn boot(vmlinuz: &Path, initramfs: &Path, work: &Path, phase: &str, extra: &str) -> Result<String> {
    let console = work.join(format!("{phase}.console.log"));
    let results = work.join(format!("{phase}.results.log"));
    let append = format!(
        "console=ttyS0 loglevel=4 panic=-1 rdinit=/lib/systemd/systemd systemd.show_status=1 pkgtest.phase={phase}{extra}"
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2,sockets=2,cores=1"])
        .args(["-m", "2G", "-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(&append)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64; run `cargo xtask deps`")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > BOOT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text =
        String::from_utf8_lossy(&std::fs::read(&results).unwrap_or_default()).replace('\r', "");
    let tail = || {
        let console = std::fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    if status.is_none() {
        bail!(
            "no poweroff within {} s; the console ended:\n{}\n{text}",
            BOOT_LIMIT.as_secs(),
            tail()
        );
    }
    if text.lines().any(|l| l == format!("PKGTEST-PASS {phase}")) {
        return Ok(text);
    }
    if !text.contains("PKGTEST-BEGIN") {
        bail!("the guest's test never ran; the console ended:\n{}", tail());
    }
    bail!("{text}")
}
