//! Every input under `fuzz/regressions/<target>/` (each one a crash the fuzzer found, kept
//! after the fix) runs through its target without a panic; and the targets reach past the
//! readers on real input.

#![allow(
    clippy::disallowed_methods,
    reason = "compiles a fixture pair with gcc"
)]

#[path = "../../kpatch-diff/tests/common/mod.rs"]
mod common;

use std::path::Path;

#[test]
fn every_regression_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut failed = Vec::new();
    let mut ran = 0;
    for target in kpatch_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target.name)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let data = std::fs::read(&path).expect("read a regression input");
            ran += 1;
            if std::panic::catch_unwind(|| (target.run)(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "panicked: {failed:?}");
    // Each directory of a target holds what its fuzzing found; an unknown directory would
    // be a regression input that never runs.
    for entry in std::fs::read_dir(&root)
        .expect("list fuzz/regressions")
        .flatten()
    {
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(kpatch_fuzz::target(&name).is_some(), "no target {name}");
        }
    }
    eprintln!("{ran} regression inputs ran clean");
}

#[test]
fn a_pair_survives_its_encoding() {
    let data = kpatch_fuzz::join_pair(true, b"orig", b"patched!");
    assert_eq!(
        kpatch_fuzz::split_pair(&data),
        Some((true, &b"orig"[..], &b"patched!"[..]))
    );
    let data = kpatch_fuzz::join_pair(false, b"", b"x");
    assert_eq!(
        kpatch_fuzz::split_pair(&data),
        Some((false, &b""[..], &b"x"[..]))
    );
    // A length past the end is no pair.
    assert_eq!(kpatch_fuzz::split_pair(&[0, 9, 0, 0, 0, 1, 2]), None);
    assert_eq!(kpatch_fuzz::split_pair(&[1, 0, 0]), None);
}

#[test]
fn the_targets_run_on_a_real_pair() {
    if !common::have_tool("gcc") {
        return;
    }
    let orig = common::compile_fixture("changed", "orig");
    let patched = common::compile_fixture("changed", "patched");
    // The pair diffs to an output object: the diff target reaches the writer.
    let output = kpatch_diff::diff(&kpatch_diff::Pair {
        name: "fuzz.o",
        orig_name: "fuzz.orig.o",
        orig: &orig,
        patched: &patched,
        klp_object: "vmlinux",
    })
    .expect("the changed fixture diffs");
    assert!(output.object.is_some(), "the changed fixture has an output");
    for target in kpatch_fuzz::TARGETS {
        (target.run)(&orig);
    }
    kpatch_fuzz::diff(&kpatch_fuzz::join_pair(false, &orig, &patched));
    kpatch_fuzz::diff(&kpatch_fuzz::join_pair(true, &orig, &patched));
}
