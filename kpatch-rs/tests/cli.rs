//! The command line as scripts meet it: usage errors exit 1 (2 means "cannot be live patched"),
//! help exits 0, and `--make-var` takes only `VAR=VALUE`.

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(args)
        .output();
    let Ok(output) = output else {
        panic!("cannot run kpatch-rs: {output:?}")
    };
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn usage_errors_exit_1_not_the_unpatchable_code() {
    for args in [
        &["build"][..],
        &[
            "build",
            "--no-such-option",
            "--sourcedir",
            "/tmp",
            "x.patch",
        ],
        &["diff"],
        &["no-such-command"],
    ] {
        let (code, text) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains("error"), "{args:?}: {text}");
    }
}

#[test]
fn help_exits_0() {
    let (code, text) = run(&["build", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("--make-var <VAR=VALUE>"), "{text}");
}

#[test]
fn make_var_needs_a_name_and_a_value() {
    for (bad, why) in [
        ("RUSTC", "is not VAR=VALUE"),
        ("1RUSTC=/usr/bin/rustc", "is not a make variable name"),
        ("=x", "is not a make variable name"),
        ("A-B=x", "is not a make variable name"),
    ] {
        let (code, text) = run(&[
            "build",
            "--sourcedir",
            "/tmp",
            "--vmlinux",
            "/tmp/vmlinux",
            "--make-var",
            bad,
            "x.patch",
        ]);
        assert_eq!(code, Some(1), "{bad}: {text}");
        assert!(text.contains(why), "{bad}: {text}");
    }
    // A good one passes the parser and the build fails later, on the missing inputs.
    let (code, text) = run(&[
        "build",
        "--sourcedir",
        "/nonexistent-kpatch-rs-tree",
        "--vmlinux",
        "/nonexistent-kpatch-rs-tree/vmlinux",
        "--make-var",
        "RUSTC=/usr/bin/rustc",
        "x.patch",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("--make-var"), "{text}");
}
