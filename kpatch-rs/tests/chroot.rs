//! `kpatch-rs build --chroot DIR`, against a small root made here from this machine's own
//! programs: its `gcc` and `ld` are scripts that say another version, and the tree's
//! Makefile records where it ran. So the test shows, without any distribution's packages,
//! that the compiler check asks the root's compiler, that make runs inside the root as the
//! calling user, that the source tree is read-only there, and that no mount is left behind.
//! It runs as root and, through `setpriv`, as `nobody` (the user-namespace path).

#![allow(
    clippy::disallowed_methods,
    reason = "tests make a root from this machine's programs and run the binary"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs the root's make and Makefile need, copied with their libraries.
const PROGRAMS: &[&str] = &[
    "/usr/bin/make",
    "/bin/sh",
    "/usr/bin/cat",
    "/usr/bin/id",
    "/usr/bin/touch",
];

/// What the root's compiler says it is; the kernel config names the same.
const ROOT_GCC: &str = "gcc (kpatch-rs test root) 99.1.0";

/// The tree's Makefile: its configuration step writes what it saw and fails, so the build
/// stops there.
const MAKEFILE: &str = "VERSION = 6
PATCHLEVEL = 12
SUBLEVEL = 0
olddefconfig:
\tcat /etc/kpatch-rs-test-root > $(O)/seen
\tid -u >> $(O)/seen
\tif touch $(CURDIR)/written 2>/dev/null; then echo source-writable; else echo source-read-only; fi >> $(O)/seen
\texit 3
";

fn copy_with_parents(from: &Path, root: &Path) {
    let to = root.join(from.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// A root with `PROGRAMS`, their libraries (from `ldd`), and script `gcc` and `ld`.
fn make_root(root: &Path) {
    for program in PROGRAMS {
        copy_with_parents(Path::new(program), root);
        let ldd = Command::new("ldd").arg(program).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let library = line
                .split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from);
            if let Some(library) = library {
                copy_with_parents(&library, root);
            }
        }
    }
    let bin = root.join("usr/bin");
    for (name, version) in [
        ("gcc", ROOT_GCC),
        ("ld", "GNU ld (kpatch-rs test root) 9.9"),
    ] {
        let script = bin.join(name);
        std::fs::write(&script, format!("#!/bin/sh\necho '{version}'\n")).expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for dir in ["etc", "dev", "proc"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::fs::write(root.join("etc/kpatch-rs-test-root"), "inside the root\n").expect("write");
}

/// A tree that passes the input checks, a config of the root's compiler, and a patch.
fn make_inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let source = dir.join("source");
    std::fs::create_dir_all(source.join("kernel")).expect("mkdir");
    std::fs::create_dir_all(source.join("fs")).expect("mkdir");
    std::fs::write(source.join("Makefile"), MAKEFILE).expect("write");
    std::fs::write(source.join("fs/x.c"), "int x(void)\n{\n\treturn 1;\n}\n").expect("write");
    let config = dir.join("config");
    std::fs::write(
        &config,
        format!("CONFIG_CC_VERSION_TEXT=\"{ROOT_GCC}\"\nCONFIG_LIVEPATCH=y\n"),
    )
    .expect("write");
    let symbols = dir.join("System.map");
    std::fs::write(&symbols, "ffffffff81000000 T x\n").expect("write");
    std::fs::write(dir.join("Module.symvers"), "").expect("write");
    let patch = dir.join("x.patch");
    std::fs::write(
        &patch,
        "--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,4 +1,4 @@\n int x(void)\n {\n-\treturn 1;\n+\treturn 2;\n }\n",
    )
    .expect("write");
    (source, config, symbols, patch)
}

fn open_to_all(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Runs the build as `user` (None: this process's user) and checks what the Makefile saw.
fn check_build_in_root(user: Option<&str>) {
    let dir = tempfile::tempdir().expect("temp dir");
    open_to_all(dir.path());
    let root = dir.path().join("root");
    make_root(&root);
    let (source, config, symbols, patch) = make_inputs(dir.path());
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    // The binary where `nobody` can run it.
    let binary = dir.path().join("kpatch-rs");
    std::fs::copy(env!("CARGO_BIN_EXE_kpatch-rs"), &binary).expect("copy the binary");
    let mut command = match user {
        Some(user) => {
            // A root belongs to root, and its owner makes the mount points a user's builds
            // need, once; without them the build says so (checked first).
            let refused = Command::new("setpriv")
                .args(["--reuid", user, "--regid", "nogroup", "--clear-groups"])
                .arg(&binary)
                .arg("build")
                .arg("--sourcedir")
                .arg(&source)
                .arg("--cache-dir")
                .arg(&cache)
                .arg("--chroot")
                .arg(&root)
                .arg("--config")
                .arg(&config)
                .arg("--system-map")
                .arg(&symbols)
                .arg(&patch)
                .output()
                .expect("run kpatch-rs");
            let text = String::from_utf8_lossy(&refused.stderr);
            assert_eq!(refused.status.code(), Some(1), "{text}");
            assert!(text.contains("have the root's owner make it"), "{text}");
            for path in [&source, &cache] {
                let inside = root.join(path.strip_prefix("/").expect("absolute"));
                std::fs::create_dir_all(inside).expect("mkdir");
            }
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&cache)
                .status()
                .expect("chown");
            assert!(status.success());
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid", user, "--regid", "nogroup", "--clear-groups"])
                .arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    command
        .arg("build")
        .arg("--sourcedir")
        .arg(&source)
        .arg("--config")
        .arg(&config)
        .arg("--system-map")
        .arg(&symbols)
        .arg("--symvers")
        .arg(dir.path().join("Module.symvers"))
        .args(["--kernel-release", "6.12.0-test", "-j1"])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--chroot")
        .arg(&root)
        .arg("-o")
        .arg(dir.path().join("out"))
        .arg(&patch);
    let output = command.output().expect("run kpatch-rs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The compiler check asked the root's gcc (this machine's would be refused with exit 2),
    // and the build stopped where the Makefile fails.
    assert_eq!(output.status.code(), Some(1), "{user:?}: {stderr}");
    assert!(
        stderr.contains("configuring the kernel build failed"),
        "{user:?}: {stderr}"
    );
    let seen = std::fs::read_dir(&cache)
        .expect("cache")
        .flatten()
        .map(|entry| entry.path().join("original/seen"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{user:?}: make wrote no record: {stderr}"));
    let seen = std::fs::read_to_string(seen).expect("read");
    let uid = match user {
        Some(_) => "65534".to_string(),
        // SAFETY: geteuid has no preconditions.
        None => unsafe { libc::geteuid() }.to_string(),
    };
    assert_eq!(
        seen,
        format!("inside the root\n{uid}\nsource-read-only\n"),
        "{user:?}"
    );
    assert!(!source.join("written").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&*root.to_string_lossy()),
        "a mount was left behind: {mounts}"
    );
}

#[test]
fn compiles_and_links_run_in_the_root_as_the_user_with_the_tree_read_only() {
    check_build_in_root(None);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        check_build_in_root(Some("nobody"));
    }
}
