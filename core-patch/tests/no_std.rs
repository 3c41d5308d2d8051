//! The algorithm must build for the kernel: `#![no_std]`, only `core`, no allocation, every
//! public item documented (Kbuild passes `-W missing-docs`), and self-contained in one file
//! that Kbuild can compile by path.
//!
//! The builds need the `x86_64-unknown-none` target (`rustup target add x86_64-unknown-none`);
//! without it they are skipped with a message, except under `CI`, where they fail.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn algorithm_source() -> String {
    let path = manifest_dir().join("src/module_notifier.rs");
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {path:?}: {e}"),
    }
}

/// Whether rustc has the standard library parts (`core`) for the bare-metal target.
fn target_installed() -> bool {
    let output = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let Ok(output) = output else {
        return false;
    };
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    output.status.success()
        && std::fs::read_dir(&libdir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
}

fn require_target() -> bool {
    if target_installed() {
        return true;
    }
    kpatch_support::skip_unless_ci(&format!(
        "the {TARGET} target is not installed (rustup target add {TARGET})"
    ));
    false
}

fn run(command: &mut Command) {
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => panic!("cannot run {command:?}: {e}"),
    };
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn scratch_dir(name: &str) -> PathBuf {
    // Beside the workspace's target directory, so that the nested builds never wait for the
    // lock of the build that runs this test.
    let dir = manifest_dir()
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
        .join(name);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[test]
fn crate_builds_for_a_bare_metal_target_without_the_model() {
    if !require_target() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));
    run(Command::new(cargo)
        .current_dir(manifest_dir())
        .args([
            "build",
            "--quiet",
            "-p",
            "core-patch",
            "--no-default-features",
        ])
        .args(["--target", TARGET])
        .env("CARGO_TARGET_DIR", scratch_dir("no-std-check"))
        .env("RUSTFLAGS", "-D warnings -D missing-docs"));
}

#[test]
fn algorithm_file_compiles_alone_as_kbuild_would_include_it() {
    if !require_target() {
        return;
    }
    let dir = scratch_dir("kbuild-check");
    let root = dir.join("root.rs");
    let algorithm = manifest_dir().join("src/module_notifier.rs");
    let wrapper = format!(
        "//! Stand-in for the kernel crate that includes the algorithm by path.\n\
         #![no_std]\n#[path = {:?}]\npub mod module_notifier;\n",
        algorithm
    );
    if let Err(e) = std::fs::write(&root, wrapper) {
        panic!("cannot write {root:?}: {e}");
    }
    run(Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "--crate-name",
            "klp_notifier",
        ])
        .args(["--target", TARGET, "-D", "warnings", "-D", "missing-docs"])
        .arg("--out-dir")
        .arg(&dir)
        .arg(&root));
}

#[test]
fn algorithm_uses_only_core_and_its_host_trait() {
    let source = algorithm_source();
    for forbidden in [
        "alloc",
        "std::",
        "extern crate",
        "crate::",
        "super::",
        "Vec",
        "Box",
        "String",
        "unwrap",
        "expect(",
        "panic!",
        "unsafe",
    ] {
        let hits: Vec<&str> = source
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| l.contains(forbidden))
            .collect();
        assert!(
            hits.is_empty(),
            "module_notifier.rs uses `{forbidden}`: {hits:?}"
        );
    }
}

#[test]
fn crate_root_is_no_std() {
    let path = manifest_dir().join("src/lib.rs");
    let lib = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(lib.lines().any(|l| l.trim() == "#![no_std]"), "{path:?}");
    // std only comes with the model.
    let std_lines: Vec<&str> = lib
        .lines()
        .filter(|l| l.contains("extern crate std"))
        .collect();
    assert_eq!(std_lines, ["extern crate std;"]);
    let before = lib.split("extern crate std;").next().unwrap_or("");
    assert!(before.trim_end().ends_with("#[cfg(feature = \"model\")]"));
}
