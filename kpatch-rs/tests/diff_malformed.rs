//! Malformed and foreign inputs end in exit code 1 with a message naming the file, never a
//! panic: truncated objects, a wrong machine, garbage, executables, and every single-byte
//! corruption of a real object.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

#[path = "../../kpatch-diff/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use kpatch_diff::{diff, Pair};

fn kpatch_rs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
}

/// Runs `kpatch-rs diff good bad` and asserts exit 1 with `message` on stderr.
fn check_rejected(good: &[u8], bad: &[u8], message: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let good_path = dir.path().join("good.o");
    let bad_path = dir.path().join("bad.o");
    std::fs::write(&good_path, good).expect("write");
    std::fs::write(&bad_path, bad).expect("write");
    let output = kpatch_rs()
        .arg("diff")
        .arg(&good_path)
        .arg(&bad_path)
        .arg("-o")
        .arg(dir.path().join("out.o"))
        .output()
        .expect("run kpatch-rs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot read {}: {message}",
            bad_path.display()
        )),
        "expected `{message}` in:\n{stderr}"
    );
    assert!(!dir.path().join("out.o").exists(), "no output on error");
}

fn compiled() -> Option<Vec<u8>> {
    common::have_tool("gcc").then(|| common::compile_fixture("changed", "orig"))
}

#[test]
fn garbage_is_not_elf() {
    let good = compiled().unwrap_or_default();
    check_rejected(
        &good,
        b"this is not an object file at all",
        "not an ELF file (no ELF magic)",
    );
}

#[test]
fn truncated_objects_are_rejected() {
    let Some(good) = compiled() else { return };
    check_rejected(
        &good,
        &good[..40],
        "truncated ELF header (40 bytes, need 64)",
    );
    // The section headers sit at the end of a gcc object: cutting the tail loses them.
    let cut = &good[..good.len() - 100];
    check_rejected(&good, cut, "invalid section table");
}

#[test]
fn wrong_machine_is_rejected() {
    let Some(good) = compiled() else { return };
    let mut aarch64 = good.clone();
    // e_machine is the little-endian u16 at offset 18; 183 is EM_AARCH64.
    aarch64[18..20].copy_from_slice(&183u16.to_le_bytes());
    check_rejected(
        &good,
        &aarch64,
        "ELF machine is EM_AARCH64 (e_machine 183), expected x86_64",
    );
}

#[test]
fn a_32_bit_object_is_rejected() {
    let Some(good) = compiled() else { return };
    let dir = tempfile::tempdir().expect("temporary directory");
    let source = dir.path().join("m32.c");
    std::fs::write(&source, "int f(int x) { return x + 1; }\n").expect("write");
    let status = Command::new("gcc")
        .args(["-m32", "-c", "-o"])
        .arg(dir.path().join("m32.o"))
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc -m32 failed");
    let object = std::fs::read(dir.path().join("m32.o")).expect("read");
    check_rejected(&good, &object, "not a 64-bit ELF file");
}

#[test]
fn an_executable_is_rejected() {
    let Some(good) = compiled() else { return };
    let dir = tempfile::tempdir().expect("temporary directory");
    let source = dir.path().join("exe.c");
    std::fs::write(&source, "void _start(void) { for (;;); }\n").expect("write");
    let status = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie", "-o"])
        .arg(dir.path().join("exe"))
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed to link the executable");
    let exe = std::fs::read(dir.path().join("exe")).expect("read");
    check_rejected(
        &good,
        &exe,
        "ELF type is ET_EXEC, expected a relocatable object (ET_REL)",
    );
}

#[test]
fn a_malformed_original_is_named_by_its_own_path() {
    let Some(good) = compiled() else { return };
    let dir = tempfile::tempdir().expect("temporary directory");
    let (bad_path, good_path) = (dir.path().join("orig.o"), dir.path().join("patched.o"));
    std::fs::write(&bad_path, b"garbage").expect("write");
    std::fs::write(&good_path, &good).expect("write");
    let output = kpatch_rs()
        .arg("diff")
        .arg(&bad_path)
        .arg(&good_path)
        .output()
        .expect("run kpatch-rs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "error: cannot read {}: not an ELF file",
            bad_path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let output = kpatch_rs()
        .args(["diff", "/nonexistent/a.o", "/nonexistent/b.o"])
        .output()
        .expect("run kpatch-rs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/a.o"));
}

/// Every truncation and every single-byte corruption of a real object pair (the one with
/// special sections), on either side, either diffs or fails with an error; none panics.
#[test]
fn no_corruption_panics() {
    if !common::have_tool("gcc") {
        return;
    }
    let orig = common::compile_fixture("special", "orig");
    let patched = common::compile_fixture("special", "patched");
    let run = |orig: &[u8], patched: &[u8]| {
        let _ = diff(&Pair {
            name: "corrupt.o",
            orig_name: "original",
            orig,
            patched,
            klp_object: "vmlinux",
        });
    };
    for length in 0..patched.len() {
        run(&orig, &patched[..length]);
    }
    for position in 0..patched.len() {
        for value in [0x00, 0xff, 0x80, 0x01] {
            let mut corrupt = patched.clone();
            corrupt[position] = value;
            run(&orig, &corrupt);
        }
    }
    for position in 0..orig.len() {
        let mut corrupt = orig.clone();
        corrupt[position] ^= 0x40;
        run(&corrupt, &patched);
    }
}

#[test]
fn exit_codes_follow_the_outcome() {
    if !common::have_tool("gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, fixture: &str, variant: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, common::compile_fixture(fixture, variant)).expect("write");
        path
    };
    let run = |orig: &Path, patched: &Path, extra: &[&str]| {
        kpatch_rs()
            .arg("diff")
            .arg(orig)
            .arg(patched)
            .args(extra)
            .output()
            .expect("run kpatch-rs")
    };

    let out = dir.path().join("out.o");
    let changed = run(
        &write("a.o", "changed", "orig"),
        &write("b.o", "changed", "patched"),
        &["-o", out.to_str().unwrap_or_default(), "--json"],
    );
    assert_eq!(changed.status.code(), Some(0));
    let report: serde_json::Value =
        serde_json::from_slice(&changed.stdout).expect("--json prints one JSON document");
    assert_eq!(report["outcome"], "changed");
    assert_eq!(report["functions"][0]["name"], "cmdline_show");
    assert_eq!(report["functions"][0]["replaces"]["object"], "vmlinux");
    assert!(out.exists(), "output object written");

    let same = run(
        &write("c.o", "same", "orig"),
        &write("d.o", "same", "patched"),
        &[],
    );
    assert_eq!(same.status.code(), Some(3));

    let refused = run(
        &write("e.o", "data_value", "orig"),
        &write("f.o", "data_value", "patched"),
        &["--name", "lib/data_value.o"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(
        "error: cannot patch lib/data_value.o: data symbol threshold in section .data.threshold changed its initial value"
    ));
}

#[test]
fn several_pairs_diff_in_one_call() {
    if !common::have_tool("gcc") {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, fixture: &str, variant: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, common::compile_fixture(fixture, variant)).expect("write");
        path
    };
    let paths = [
        write("changed.orig.o", "changed", "orig"),
        write("changed.o", "changed", "patched"),
        write("same.orig.o", "same", "orig"),
        write("same.o", "same", "patched"),
    ];
    let out = dir.path().join("out");
    let run = kpatch_rs()
        .arg("diff")
        .args(&paths)
        .arg("-o")
        .arg(&out)
        .arg("--json")
        .output()
        .expect("run kpatch-rs");
    // One pair changed, one did not: the call as a whole did its job.
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON array");
    assert_eq!(reports[0]["outcome"], "changed");
    assert_eq!(reports[1]["outcome"], "no-change");
    assert!(
        out.join("changed.o").is_file(),
        "output of the changed pair"
    );
    assert!(
        !out.join("same.o").exists(),
        "no output for an unchanged pair"
    );

    let odd = kpatch_rs()
        .arg("diff")
        .args(&paths[..3])
        .output()
        .expect("run kpatch-rs");
    assert_eq!(odd.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&odd.stderr).contains("takes pairs of objects"));
}
