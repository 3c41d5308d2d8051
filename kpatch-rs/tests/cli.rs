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
    // kpatch-build's names, each with an example.
    for option in [
        "-t, --target <OBJECT>",
        "--oot-module <FILE.ko>",
        "--oot-module-src <DIR>",
        "-R, --no-replace",
    ] {
        assert!(text.contains(option), "{option}: {text}");
    }
    let examples = text.split("Examples:").nth(1).unwrap_or_default();
    assert!(examples.contains("-t binfmt_misc"), "{text}");
    assert!(examples.contains("--oot-module-src"), "{text}");
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

#[test]
fn a_signing_key_needs_its_certificate_and_the_other_way_round() {
    let base = [
        "build",
        "--sourcedir",
        "/nonexistent-kpatch-rs-tree",
        "--vmlinux",
        "/nonexistent-kpatch-rs-tree/vmlinux",
    ];
    for (option, missing) in [("--sign-key", "--sign-cert"), ("--sign-cert", "--sign-key")] {
        let mut args = base.to_vec();
        args.extend([option, "/tmp/signing.pem", "x.patch"]);
        let (code, text) = run(&args);
        assert_eq!(code, Some(1), "{option}: {text}");
        assert!(
            text.contains("required arguments were not provided") && text.contains(missing),
            "{option}: {text}"
        );
    }
    // Both together pass the parser; the build then fails on the missing source tree.
    let mut args = base.to_vec();
    args.extend([
        "--sign-key",
        "pkcs11:token=kernel",
        "--sign-cert",
        "/tmp/cert.pem",
        "x.patch",
    ]);
    let (code, text) = run(&args);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("is not a kernel source tree"), "{text}");
}

#[test]
fn build_json_prints_a_document_when_no_module_is_built() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["build", "--json", "--sourcedir"])
        .arg(dir.path())
        .args(["--system-map", "/nonexistent/System.map", "fix.patch"])
        .output()
        .expect("run kpatch-rs");
    assert_eq!(output.status.code(), Some(1));
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    assert_eq!(document["outcome"], "error");
    assert_eq!(document["exit_code"], 1);
    assert!(
        document["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not a kernel source tree")),
        "{document}"
    );
    assert_eq!(document["refusals"], serde_json::json!([]));
    // The message is on stderr too, for the log.
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error: "));
}

#[test]
fn version_names_the_commit() {
    let (code, text) = run(&["--version"]);
    assert_eq!(code, Some(0));
    let commit = text
        .trim()
        .strip_prefix(concat!(
            "kpatch-rs ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        ))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {text}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "not a commit: {commit}"
    );
}

#[test]
fn man_pages_and_completions_come_from_the_options() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, text) = run(&["man", &dir.path().display().to_string()]);
    assert_eq!(code, Some(0), "{text}");
    let build = std::fs::read_to_string(dir.path().join("kpatch-rs-build.1")).expect("build page");
    for option in ["allow\\-layout\\-change", "no\\-replace", "sign\\-key"] {
        assert!(build.contains(option), "kpatch-rs-build.1 lacks {option}");
    }
    assert!(dir.path().join("kpatch-rs-core-explore.1").is_file());
    let (code, script) = run(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{script}");
    assert!(script.contains("--allow-layout-change") && script.contains("-R"));
    // The script loads in bash and registers the command.
    let path = dir.path().join("kpatch-rs.bash");
    std::fs::write(&path, &script).expect("write script");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p kpatch-rs",
            path.display()
        ))
        .output()
        .expect("run bash");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("kpatch-rs"),
        "bash: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (code, _) = run(&["completions", "no-such-shell"]);
    assert_eq!(code, Some(1));
}

#[test]
fn a_usage_error_of_build_json_is_a_json_document_too() {
    let output = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["build", "--json", "--no-such-option", "x.patch"])
        .output()
        .expect("run kpatch-rs");
    assert_eq!(output.status.code(), Some(1));
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON document on stdout");
    assert_eq!(document["outcome"], "error");
    assert_eq!(document["exit_code"], 1);
    assert_eq!(document["schema_version"], 1);
    assert!(
        document["message"]
            .as_str()
            .is_some_and(|m| m.contains("--no-such-option")),
        "{document}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-option"));
    // Without --json, stdout stays empty.
    let plain = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["build", "--no-such-option", "x.patch"])
        .output()
        .expect("run kpatch-rs");
    assert_eq!(plain.status.code(), Some(1));
    assert!(plain.stdout.is_empty());
}

#[test]
fn the_loader_refuses_what_is_no_livepatch_module_before_touching_the_kernel() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = dir.path().join("notes.ko");
    std::fs::write(&text, "not a module").expect("write");
    let text = text.to_string_lossy().into_owned();
    for args in [
        &["load", text.as_str()][..],
        &["info", text.as_str()],
        &["load", "/nonexistent/livepatch-x.ko"],
    ] {
        let (code, output) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {output}");
        assert!(output.starts_with("error: cannot "), "{args:?}: {output}");
        assert_eq!(output.lines().count(), 1, "{args:?}: {output}");
    }
    let (code, output) = run(&["load", "--timeout", "soon", "x.ko"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("invalid value 'soon'"), "{output}");
    let (code, output) = run(&["unload"]);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("<LIVEPATCH>"), "{output}");
}
