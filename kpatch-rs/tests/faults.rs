//! Faults that must lose nothing: bad patches, a source tree of another release, a read-only
//! source tree, a full file system under the cache or the output directory. Each ends with a
//! clear error (exit 1) and nothing in the output directory, or with the module, and the
//! user's tree is never written; after the fault, the next run gives the same bytes.
//!
//! The patch and version checks run on a small made-up tree everywhere; the rest needs the
//! test kernel (`KPATCH_RS_KERNEL_SOURCE`, `KPATCH_RS_KERNEL_BUILD`, set by `cargo xtask ci`)
//! and, for the mounts, root (a private mount namespace, `unshare --mount`). Without them the
//! tests say they are skipped, except under `CI`, where that is a failure. Killing builds
//! and running them side by side is `cargo xtask faults`.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, kernel, stderr, Kernel};

const CMDLINE_C: &str = "fs/proc/cmdline.c";

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// A file that `cmdline.patch` applies to: its hunk's old side at the hunk's line (7), after
/// lines of filler.
fn old_side() -> String {
    let patch = std::fs::read_to_string(fixture("cmdline.patch")).expect("read cmdline.patch");
    let mut text = "/* made up for the fault tests */\n".repeat(6);
    let hunk = patch.split_once("@@\n").expect("a hunk").1;
    for line in hunk.lines() {
        if let Some(kept) = line.strip_prefix(' ').or_else(|| line.strip_prefix('-')) {
            text.push_str(kept);
            text.push('\n');
        }
    }
    text + "/* the end */\n"
}

/// A source tree that passes the argument checks, with the files a kernel's inputs phase
/// reads, and nothing to build: every error here must come before any compiling.
struct MadeUpKernel {
    dir: tempfile::TempDir,
}

impl MadeUpKernel {
    fn new(makefile_version: (u32, u32, u32)) -> MadeUpKernel {
        let dir = tempfile::tempdir().expect("temp dir");
        let (version, patchlevel, sublevel) = makefile_version;
        write(
            &dir.path().join("source/Makefile"),
            format!(
                "VERSION = {version}\nPATCHLEVEL = {patchlevel}\nSUBLEVEL = {sublevel}\n\
                 EXTRAVERSION =\nNAME = Baby Opossum Posse\n"
            ),
        );
        std::fs::create_dir_all(dir.path().join("source/kernel")).expect("mkdir");
        write(&dir.path().join(format!("source/{CMDLINE_C}")), old_side());
        write(
            &dir.path().join("boot/config"),
            "#\n# Linux/x86 6.12.117 Kernel Configuration\n#\nCONFIG_LIVEPATCH=y\n",
        );
        write(&dir.path().join("boot/Module.symvers"), "");
        write(&dir.path().join("boot/vmlinux"), "not an ELF file");
        MadeUpKernel { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kpatch-rs build` of `patches`; `extra` may give another `--config` or `--vmlinux`.
    fn build(&self, extra: &[&str], patches: &[PathBuf]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"));
        command.arg("build");
        for (option, default) in [("--vmlinux", "boot/vmlinux"), ("--config", "boot/config")] {
            if !extra.contains(&option) {
                command.arg(option).arg(self.path(default));
            }
        }
        command
            .arg("--sourcedir")
            .arg(self.path("source"))
            .arg("--symvers")
            .arg(self.path("boot/Module.symvers"))
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .arg("-o")
            .arg(self.path("out"))
            .args(extra)
            .args(patches)
            .output()
            .expect("run kpatch-rs")
    }
}

/// The bad forms of `cmdline.patch`: a name, the patch text, and whether kpatch-rs can tell
/// before it makes the patched tree (it then creates no cache entry at all).
fn bad_patches(dir: &Path) -> Vec<(&'static str, PathBuf, bool)> {
    let good = std::fs::read_to_string(fixture("cmdline.patch")).expect("read cmdline.patch");
    let header = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n";
    let body = good
        .strip_prefix(header)
        .expect("cmdline.patch starts with its header");
    let forms: Vec<(&str, String, bool)> = vec![
        ("crlf", good.replace('\n', "\r\n"), true),
        (
            "rename",
            format!(
                "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline2.c\nsimilarity index 90%\n\
                 rename from fs/proc/cmdline.c\nrename to fs/proc/cmdline2.c\n\
                 --- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline2.c\n{body}"
            ),
            true,
        ),
        (
            "binary",
            "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\nindex 1111111..2222222 100644\n\
             GIT binary patch\nliteral 10\nRcmZ?wbM$j|a7j^+0002H0|Ed5\n\nliteral 0\n\
             HcmV?d00001\n\n"
                .to_string(),
            true,
        ),
        (
            "binary-differ",
            "diff -ru a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n\
             Binary files a/fs/proc/cmdline.c and b/fs/proc/cmdline.c differ\n"
                .to_string(),
            true,
        ),
        (
            "missing",
            good.replace("fs/proc/cmdline.c", "fs/proc/cmdline-gone.c"),
            true,
        ),
        // The first context line differs from the tree's: applies only with fuzz.
        (
            "fuzz",
            good.replacen("@@\n \n", "@@\n /* not in the tree */\n", 1),
            false,
        ),
        (
            "stale",
            std::fs::read_to_string(fixture("stale.patch")).expect("read stale.patch"),
            false,
        ),
    ];
    forms
        .into_iter()
        .map(|(name, text, early)| {
            let path = dir.join(format!("{name}.patch"));
            write(&path, text);
            (name, path, early)
        })
        .collect()
}

/// What each bad form's error must say, besides the patch's path and the file.
fn expected_message(name: &str) -> &'static str {
    match name {
        "crlf" => "has CRLF line endings (line 1, in its change to fs/proc/cmdline.c)",
        "rename" => "renames fs/proc/cmdline.c to fs/proc/cmdline2.c",
        "binary" => "has a binary change to fs/proc/cmdline.c (GIT binary patch)",
        "binary-differ" => "has a binary change to fs/proc/cmdline.c (\"Binary files",
        "missing" => "changes fs/proc/cmdline-gone.c, which the source tree",
        "fuzz" => "applies to fs/proc/cmdline.c only with fuzz (hunk #1 with fuzz 1)",
        "stale" => "does not apply to fs/proc/cmdline.c: hunk #1 at line 7 FAILED",
        _ => unreachable!("no such form {name}"),
    }
}

#[test]
fn bad_patches_are_errors_that_name_the_patch_and_the_file() {
    let kernel = MadeUpKernel::new((6, 12, 117));
    let before = kpatch_support::tree_fingerprint(&kernel.path("source"), &[CMDLINE_C])
        .expect("fingerprint");
    for (name, patch, early) in bad_patches(kernel.dir.path()) {
        let result = kernel.build(&[], std::slice::from_ref(&patch));
        let message = stderr(&result);
        assert_eq!(result.status.code(), Some(1), "{name}: {message}");
        assert!(
            message.contains(&format!("patch {}", patch.display()))
                && message.contains(expected_message(name)),
            "{name}: expected `{}` in: {message}",
            expected_message(name)
        );
        assert!(entries(&kernel.path("out")).is_empty(), "{name}: output");
        if early {
            assert!(
                !kernel.path("cache").exists(),
                "{name}: refused after the cache was made"
            );
        }
    }
    // The good patch applies to the made-up tree (which then fails to configure: it has
    // nothing to build).
    let good = kernel.build(&[], &[fixture("cmdline.patch")]);
    assert_eq!(good.status.code(), Some(1), "{}", stderr(&good));
    assert!(
        stderr(&good).contains("configuring the kernel build failed"),
        "{}",
        stderr(&good)
    );
    assert_eq!(
        kpatch_support::tree_fingerprint(&kernel.path("source"), &[CMDLINE_C])
            .expect("fingerprint"),
        before,
        "the source tree changed"
    );
}

/// `vmlinux` with the banner of `release`, as the kernel's `init/version.c` defines it.
fn vmlinux_of(dir: &Path, release: &str) -> PathBuf {
    let source = dir.join("version.c");
    write(
        &source,
        format!(
            "const char linux_banner[] = \"Linux version {release} (builder@host) (gcc) #1 SMP\\n\";\n"
        ),
    );
    let object = dir.join("vmlinux-with-banner");
    let status = Command::new("gcc")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed");
    object
}

#[test]
fn a_source_tree_of_another_release_is_refused_before_any_work_with_both_versions() {
    let kernel = MadeUpKernel::new((6, 1, 0));
    let patch = fixture("cmdline.patch");
    let source = kernel.path("source");
    let check = |extra: &[&str], what: &str| {
        let result = kernel.build(extra, std::slice::from_ref(&patch));
        let message = stderr(&result);
        assert_eq!(result.status.code(), Some(1), "{message}");
        assert!(
            message.contains(&format!(
                "the source tree {} is Linux 6.1.0 (its Makefile), and {what}",
                source.display()
            )),
            "expected `{what}` in: {message}"
        );
        assert!(
            !kernel.path("cache").exists(),
            "refused after the cache was made"
        );
        assert!(entries(&kernel.path("out")).is_empty());
    };
    let config = kernel.path("boot/config");
    check(
        &[],
        &format!("the kernel config {} is of 6.12.117", config.display()),
    );
    // A config without Kconfig's header says nothing; vmlinux's banner still does.
    let bare = kernel.path("boot/bare-config");
    write(&bare, "CONFIG_LIVEPATCH=y\n");
    let vmlinux = vmlinux_of(kernel.dir.path(), "6.12.117-custom");
    let (bare_arg, vmlinux_arg) = (bare.display().to_string(), vmlinux.display().to_string());
    check(
        &["--config", &bare_arg, "--vmlinux", &vmlinux_arg],
        &format!("vmlinux {vmlinux_arg} is of 6.12.117-custom"),
    );
    // The release given for the module's vermagic is checked too.
    let result = kernel.build(
        &["--config", &bare_arg, "--kernel-release", "6.12.117"],
        std::slice::from_ref(&patch),
    );
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert!(
        stderr(&result)
            .contains("kernel release 6.12.117 is not of the source tree's version 6.1.0"),
        "{}",
        stderr(&result)
    );
    // Of the same release, the made-up tree passes the version checks.
    let same = MadeUpKernel::new((6, 12, 117));
    let vmlinux = vmlinux_of(same.dir.path(), "6.12.117");
    let result = same.build(
        &["--vmlinux", &vmlinux.display().to_string()],
        std::slice::from_ref(&patch),
    );
    assert!(
        !stderr(&result).contains("is Linux 6.12.117 (its Makefile)"),
        "{}",
        stderr(&result)
    );
}

impl Kernel {
    fn fingerprint(&self) -> (usize, u64) {
        kpatch_support::tree_fingerprint(&self.source, &[CMDLINE_C]).expect("fingerprint")
    }
}

#[test]
fn after_bad_patches_the_next_run_gives_the_same_bytes() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let before = kernel.fingerprint();
    let build = |output: &str, patch: &Path| {
        kernel
            .command(&dir.path().join(output), &[], &[patch.to_path_buf()])
            .output()
            .expect("run kpatch-rs")
    };
    let first = build("first", &fixture("cmdline.patch"));
    assert!(first.status.success(), "{}", stderr(&first));
    let module = std::fs::read(dir.path().join("first/livepatch-cmdline.ko")).expect("module");
    for (name, patch, _) in bad_patches(dir.path()) {
        let result = build(name, &patch);
        assert_eq!(result.status.code(), Some(1), "{name}: {}", stderr(&result));
        assert!(
            stderr(&result).contains(expected_message(name)),
            "{name}: {}",
            stderr(&result)
        );
        assert!(entries(&dir.path().join(name)).is_empty(), "{name}: output");
    }
    // A hunk whose line number is off applies as it is (an offset, not fuzz).
    let good = std::fs::read_to_string(fixture("cmdline.patch")).expect("read");
    // (Named as the original: the module records its patches' file names.)
    let offset = dir.path().join("offset/cmdline.patch");
    write(
        &offset,
        good.replace("@@ -7,8 +7,7 @@", "@@ -12,8 +12,7 @@"),
    );
    let after = kernel
        .command(&dir.path().join("after"), &[], &[offset])
        .output()
        .expect("run kpatch-rs");
    assert!(after.status.success(), "{}", stderr(&after));
    assert!(
        std::fs::read(dir.path().join("after/livepatch-cmdline.ko")).expect("module") == module,
        "the run after the bad patches gave other bytes"
    );
    assert_eq!(kernel.fingerprint(), before, "the source tree changed");
}

/// Runs `script` as root in a private mount namespace, so that its mounts go with it; None
/// (skipped, or failed under CI) when this machine cannot.
fn in_mount_namespace(script: &str) -> Option<Output> {
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=4k tmpfs /mnt")
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            kpatch_support::skip_unless_ci(&format!(
                "cannot mount a tmpfs in a private mount namespace (needs root): {}",
                stderr(&output).trim()
            ));
            return None;
        }
        Err(error) => {
            kpatch_support::skip_unless_ci(&format!("cannot run unshare (util-linux): {error}"));
            return None;
        }
    }
    Some(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c"])
            .arg(script)
            .output()
            .expect("run unshare"),
    )
}

/// The `rc=` lines a namespace script prints, by step.
fn step_codes(output: &Output) -> Vec<(String, i32)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (step, rc) = line.strip_prefix("step ")?.split_once(" rc=")?;
            Some((step.to_string(), rc.trim().parse().ok()?))
        })
        .collect()
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

#[test]
fn a_read_only_tree_and_full_file_systems_lose_nothing() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let before = kernel.fingerprint();
    // The reference: the same patch built the ordinary way.
    let reference_out = dir.path().join("reference");
    let reference = kernel
        .command(&reference_out, &[], &[fixture("cmdline.patch")])
        .output()
        .expect("run kpatch-rs");
    assert!(reference.status.success(), "{}", stderr(&reference));
    let module = std::fs::read(reference_out.join("livepatch-cmdline.ko")).expect("module");

    let cache = dir.path().join("cache");
    let tiny_out = dir.path().join("tiny-out");
    for path in [&cache, &tiny_out] {
        std::fs::create_dir_all(path).expect("mkdir");
    }
    let command = kernel.command(&dir.path().join("OUT"), &[], &[fixture("cmdline.patch")]);
    let mut line: Vec<String> = vec![shell_quote(Path::new(command.get_program()))];
    line.extend(
        command
            .get_args()
            .map(|arg| shell_quote(Path::new(arg)))
            .collect::<Vec<_>>(),
    );
    let build_line = line
        .join(" ")
        .replace(&shell_quote(&dir.path().join("OUT")), "\"$out\"");
    let (src, cache_q, tiny_q, logs) = (
        shell_quote(&kernel.source),
        shell_quote(&cache),
        shell_quote(&tiny_out),
        shell_quote(dir.path()),
    );
    // Each step prints `step NAME rc=N`; its stderr goes to NAME.err beside the outputs.
    let script = format!(
        r#"set -u
mount --bind {src} {src} && mount -o remount,bind,ro {src} || {{ echo "step ro-mount rc=99"; exit 1; }}
touch {src}/kpatch-rs-write-probe 2>/dev/null && {{ echo "step ro-check rc=98"; rm -f {src}/kpatch-rs-write-probe; }}
run() {{ local name=$1; out={logs}/$name
  {build_line} --cache-dir {cache_q} 2>{logs}/$name.err >/dev/null
  echo "step $name rc=$?"; }}
mount -t tmpfs -o size=64m tmpfs {cache_q}
run full-copy
mount -o remount,size=4g {cache_q}
run read-only
# Leaves $1 KiB free: a file of that size kept aside while the rest fills up.
fill() {{ rm -f {cache_q}/ballast; dd if=/dev/zero of={cache_q}/keep bs=1k count=$1 2>/dev/null
  dd if=/dev/zero of={cache_q}/ballast bs=64k 2>/dev/null; rm -f {cache_q}/keep; }}
for free in 0 16 64 256; do fill $free; run full-$free; done
rm -f {cache_q}/ballast
run after-full
mount -t tmpfs -o size=4k tmpfs {tiny_q}
out={tiny_q}; {build_line} --cache-dir {cache_q} 2>{logs}/tiny-out.err >/dev/null; echo "step tiny-out rc=$?"
echo "tiny-out entries: $(ls -A {tiny_q} | wc -l)"
umount {tiny_q}
"#
    );
    let Some(output) = in_mount_namespace(&script) else {
        return;
    };
    let codes = step_codes(&output);
    let err = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("{name}.err"))).unwrap_or_default()
    };
    let summary = format!(
        "{codes:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    let code = |name: &str| {
        codes
            .iter()
            .find(|(step, _)| step == name)
            .map(|(_, rc)| *rc)
            .unwrap_or_else(|| panic!("no step {name}: {summary}"))
    };
    assert!(
        !codes.iter().any(|(step, _)| step.starts_with("ro-")),
        "the read-only mount did not hold: {summary}"
    );
    // The cache's file system fills up while the tree is copied into it.
    assert_eq!(code("full-copy"), 1, "{}", err("full-copy"));
    assert!(
        err("full-copy").contains("No space left on device")
            && err("full-copy").contains("the file system is full"),
        "{}",
        err("full-copy")
    );
    // With room, a read-only tree builds (copied, since it cannot be linked) the same bytes.
    assert_eq!(code("read-only"), 0, "{}", err("read-only"));
    let same = |name: &str| {
        std::fs::read(dir.path().join(name).join("livepatch-cmdline.ko")).ok()
            == Some(module.clone())
    };
    assert!(same("read-only"), "the read-only tree gave other bytes");
    // Filled up to a little room, each build fails with a word on the full file system, or
    // builds the same module; none leaves anything in its output directory when it fails.
    let mut full_failures = 0;
    for free in ["full-0", "full-16", "full-64", "full-256"] {
        match code(free) {
            0 => assert!(same(free), "{free}: other bytes"),
            1 => {
                full_failures += 1;
                assert!(
                    err(free).contains("No space left on device")
                        || err(free).contains("is its file system full?")
                        || err(free).contains("KiB free: it is full"),
                    "{free}: {}",
                    err(free)
                );
                assert!(entries(&dir.path().join(free)).is_empty(), "{free}: output");
            }
            other => panic!("{free}: exit {other}: {}", err(free)),
        }
    }
    assert!(
        full_failures >= 1,
        "no build met the full file system: {summary}"
    );
    assert_eq!(code("after-full"), 0, "{}", err("after-full"));
    assert!(
        same("after-full"),
        "the run after the full file system gave other bytes"
    );
    // An output directory with no room for the module: an error, and nothing in it.
    assert_eq!(code("tiny-out"), 1, "{}", err("tiny-out"));
    assert!(
        err("tiny-out").contains("No space left on device")
            && err("tiny-out").contains("the file system is full"),
        "{}",
        err("tiny-out")
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("tiny-out entries: 0"),
        "{summary}"
    );
    for name in ["full-copy", "full-0", "tiny-out"] {
        eprintln!("faults: {name}: {}", err(name).trim());
    }
    eprintln!("faults: {summary}");
    assert_eq!(kernel.fingerprint(), before, "the source tree changed");
}
