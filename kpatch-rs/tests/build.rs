//! `kpatch-rs build` against the project's cached 6.12 kernel: the module it writes, the
//! errors it gives, and the promise that the user's tree is never modified.
//!
//! The kernel comes from `cargo xtask kernel`; `cargo xtask ci` passes its directories in
//! `KPATCH_RS_KERNEL_SOURCE` and `KPATCH_RS_KERNEL_BUILD`. Without them these tests are
//! skipped with a message, except under `CI`, where that is a failure. Loading the modules
//! into a running kernel is the QEMU cases' job (`tests/`).

#![allow(
    clippy::disallowed_methods,
    reason = "tests compile fixtures and run the binary"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, kernel, stderr, Kernel};

fn project_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

/// Runs `kpatch-rs build` with `extra` arguments and the given patches, into `output`.
fn build(kernel: &Kernel, output: &Path, extra: &[&str], patches: &[PathBuf]) -> Output {
    kernel
        .command(output, extra, patches)
        .output()
        .expect("run kpatch-rs")
}

/// A cheap fingerprint of the files a patch could touch: content of every file it names.
fn snapshot(source: &Path, files: &[&str]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|file| std::fs::read(source.join(file)).expect("read source file"))
        .collect()
}

#[test]
fn cmdline_patch_builds_a_reproducible_module_and_leaves_the_tree_alone() {
    let Some(kernel) = kernel() else { return };
    let touched = ["fs/proc/cmdline.c"];
    let before = snapshot(&kernel.source, &touched);
    let dir = tempfile::tempdir().expect("temp dir");
    let patch = fixture("cmdline.patch");

    let first = build(
        &kernel,
        &dir.path().join("a"),
        &["--json"],
        std::slice::from_ref(&patch),
    );
    assert!(first.status.success(), "build failed: {}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json report");
    assert_eq!(report["kernel_name"], "livepatch_cmdline");
    let functions: Vec<&str> = report["objects"][0]["diff"]["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(functions, ["cmdline_proc_show"]);
    let phases: Vec<&str> = report["timings"]
        .as_array()
        .expect("timings")
        .iter()
        .map(|t| t[0].as_str().expect("phase"))
        .collect();
    assert_eq!(
        phases,
        [
            "inputs",
            "patched tree",
            "compile",
            "diff",
            "resolve",
            "link",
            "post-link"
        ]
    );

    // Relative paths work too: make runs elsewhere, so kpatch-rs must make them absolute.
    let second = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .current_dir(dir.path())
        .arg("build")
        .arg("--sourcedir")
        .arg(&kernel.source)
        .arg("--vmlinux")
        .arg(kernel.build.join("vmlinux"))
        .args(["--output", "b"])
        .arg(&patch)
        .output()
        .expect("run kpatch-rs");
    assert!(
        second.status.success(),
        "rebuild failed: {}",
        stderr(&second)
    );
    let module_a = std::fs::read(dir.path().join("a/livepatch-cmdline.ko")).expect("module a");
    let module_b = std::fs::read(dir.path().join("b/livepatch-cmdline.ko")).expect("module b");
    assert!(
        module_a == module_b,
        "the same inputs must give the same bytes"
    );
    assert_eq!(
        snapshot(&kernel.source, &touched),
        before,
        "the source tree changed"
    );

    // The module asks the kernel for saved_command_line, which vmlinux does not export.
    let inspect = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .arg("inspect")
        .arg("--json")
        .arg(dir.path().join("a/livepatch-cmdline.ko"))
        .output()
        .expect("run inspect");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let inspection: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    assert_eq!(inspection["livepatch"], true);
    assert!(inspection["signature"].is_null(), "{inspection}");
    assert_eq!(
        inspection["klp_symbols"],
        serde_json::json!([{ "object": "vmlinux", "name": "saved_command_line", "sympos": 0 }])
    );
    assert_eq!(
        inspection["klp_relocation_sections"][0]["name"],
        ".klp.rela.vmlinux..text.cmdline_proc_show"
    );
    assert_eq!(
        inspection["patch"]["objects"][0]["functions"][0]["old_name"],
        "cmdline_proc_show"
    );
}

#[test]
fn refusals_and_bad_inputs_exit_with_their_codes_and_write_nothing() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out");
    let check = |extra: &[&str], patch: &str, code: i32, message: &str| {
        let result = build(&kernel, &output, extra, &[fixture(patch)]);
        assert_eq!(
            result.status.code(),
            Some(code),
            "{patch}: {}",
            stderr(&result)
        );
        assert!(
            stderr(&result).contains(message),
            "{patch}: expected `{message}` in: {}",
            stderr(&result)
        );
        let written = std::fs::read_dir(&output).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{patch}: nothing may be written");
    };
    check(
        &[],
        "stale.patch",
        1,
        "stale.patch does not apply to fs/proc/cmdline.c: hunk #1 at line 7 FAILED",
    );
    check(&[], "data-init.patch", 2, "cannot patch kernel/panic.o");
    // A refusal is a document on stdout with --json, each refusal as data.
    let refused = build(&kernel, &output, &["--json"], &[fixture("data-init.patch")]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let document: serde_json::Value =
        serde_json::from_slice(&refused.stdout).expect("--json prints a document on refusal");
    assert_eq!(document["outcome"], "refused");
    assert_eq!(document["exit_code"], 2);
    assert_eq!(document["refusals"][0]["object"], "kernel/panic.o");
    assert_eq!(document["refusals"][0]["symbol"], "panic_timeout");
    assert!(
        document["refusals"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("moved from section .bss.panic_timeout")),
        "{document}"
    );
    check(&[], "comment-only.patch", 3, "the patches change no code");

    let no_livepatch = dir.path().join("no-livepatch.config");
    let config = std::fs::read_to_string(kernel.build.join(".config")).expect("config");
    std::fs::write(
        &no_livepatch,
        config.replace("CONFIG_LIVEPATCH=y", "# CONFIG_LIVEPATCH is not set"),
    )
    .expect("write config");
    check(
        &["--config", &no_livepatch.display().to_string()],
        "cmdline.patch",
        1,
        "does not enable CONFIG_LIVEPATCH",
    );
    // Signing is checked before any work: the key must be there, and the kernel must check
    // signatures (the stock test kernel does not: its config has no CONFIG_MODULE_SIG_HASH).
    let key = project_file("fixtures/signing/test-key.pem");
    check(
        &["--sign-key", "/nonexistent/key.pem", "--sign-cert", &key],
        "cmdline.patch",
        1,
        "signing key /nonexistent/key.pem does not exist",
    );
    check(
        &["--sign-key", &key, "--sign-cert", &key],
        "cmdline.patch",
        1,
        "has no CONFIG_MODULE_SIG_HASH",
    );
    let result = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["build", "--sourcedir"])
        .arg(&kernel.source)
        .args(["--vmlinux", "/nonexistent/vmlinux", "--config"])
        .arg(kernel.build.join(".config"))
        .arg("--symvers")
        .arg(kernel.build.join("Module.symvers"))
        .arg(fixture("cmdline.patch"))
        .output()
        .expect("run");
    assert_eq!(result.status.code(), Some(1));
    assert!(
        stderr(&result).contains("pass the running kernel's vmlinux (with symbols) with --vmlinux"),
        "{}",
        stderr(&result)
    );
    // A kernel built by another compiler is refused with both versions, unless the caller
    // says the difference is harmless.
    let other_compiler = dir.path().join("other-compiler.config");
    let mut lines: Vec<String> = config
        .lines()
        .filter(|l| !l.starts_with("CONFIG_CC_VERSION_TEXT="))
        .map(str::to_string)
        .collect();
    lines.push(
        "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"".into(),
    );
    std::fs::write(&other_compiler, lines.join("\n") + "\n").expect("write config");
    let other_arg = other_compiler.display().to_string();
    check(
        &["--config", &other_arg],
        "cmdline.patch",
        2,
        "it was built by `x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0`, and `gcc` here is `gcc ",
    );
    check(
        &["--config", &other_arg],
        "cmdline.patch",
        2,
        "build in a root of the kernel's release with --chroot DIR",
    );
    // A build root must be one: a directory with the kernel's toolchain.
    check(
        &["--chroot", "/nonexistent/root"],
        "cmdline.patch",
        1,
        "--chroot /nonexistent/root: not a directory; make a root of the kernel's release \
         first, for example `debootstrap",
    );
    let empty_root = dir.path().join("empty-root");
    std::fs::create_dir_all(&empty_root).expect("mkdir");
    check(
        &["--chroot", &empty_root.display().to_string()],
        "cmdline.patch",
        1,
        "it has no /usr/bin/make; install the kernel's build dependencies in it",
    );
    let skipped = build(
        &kernel,
        &output,
        &["--config", &other_arg, "--skip-compiler-check"],
        &[fixture("cmdline.patch")],
    );
    assert!(skipped.status.success(), "{}", stderr(&skipped));
    std::fs::remove_dir_all(&output).expect("remove output");
    // A file operation that fails names the operation and the path, in the message and in the
    // --json document.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write file");
    let cache = file.join("cache");
    let cache_arg = cache.display().to_string();
    check(
        &["--cache-dir", &cache_arg],
        "cmdline.patch",
        1,
        &format!("cannot create the cache {cache_arg}/"),
    );
    let failed = build(
        &kernel,
        &output,
        &["--cache-dir", &cache_arg, "--json"],
        &[fixture("cmdline.patch")],
    );
    let document: serde_json::Value =
        serde_json::from_slice(&failed.stdout).expect("--json prints a document on an error");
    assert_eq!(document["outcome"], "error");
    assert_eq!(document["exit_code"], 1);
    assert!(
        document["message"]
            .as_str()
            .is_some_and(|m| m.contains("Not a directory")),
        "{document}"
    );
}

#[test]
fn a_kpatch_macros_callback_becomes_the_objects_callback() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let result = build(&kernel, dir.path(), &[], &[fixture("callback.patch")]);
    assert!(result.status.success(), "build failed: {}", stderr(&result));
    let inspect = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["inspect", "--json"])
        .arg(dir.path().join("livepatch-callback.ko"))
        .output()
        .expect("run inspect");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let inspection: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    let object = &inspection["patch"]["objects"][0];
    // The module's own description keeps the key it has always had.
    assert_eq!(object["target"], "vmlinux");
    assert_eq!(
        object["callbacks"]["post_patch"],
        "kpatch_rs.fs/proc/cmdline.o.kpatch_demo_post_patch"
    );
    assert!(object["callbacks"]["pre_patch"].is_null());
    // The callback is new code the module carries, not a function it replaces.
    let replaced: Vec<&str> = object["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .map(|f| f["old_name"].as_str().expect("name"))
        .collect();
    assert_eq!(replaced, ["cmdline_proc_show"]);
}

#[test]
fn a_module_function_is_patched_through_its_own_klp_object() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let result = build(
        &kernel,
        dir.path(),
        &["--json"],
        &[fixture("kobject.patch")],
    );
    assert!(result.status.success(), "build failed: {}", stderr(&result));
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json report");
    assert_eq!(report["objects"][0]["klp_object"], "kobject_example");
    let inspect = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["inspect", "--json"])
        .arg(dir.path().join("livepatch-kobject.ko"))
        .output()
        .expect("run inspect");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let inspection: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    let object = &inspection["patch"]["objects"][0];
    assert_eq!(
        object["target"],
        serde_json::json!({ "module": "kobject_example" })
    );
    assert_eq!(object["functions"][0]["old_name"], "foo_show");
    // `foo` is static in the module: only a livepatch relocation, applied when the module
    // comes, can reach it. sysfs_emit is exported by vmlinux and stays a normal relocation.
    assert_eq!(
        inspection["klp_symbols"],
        serde_json::json!([{ "object": "kobject_example", "name": "foo", "sympos": 0 }])
    );
    assert_eq!(
        inspection["klp_relocation_sections"][0]["name"],
        ".klp.rela.kobject_example..text.foo_show"
    );
}

#[test]
fn a_header_change_without_cmd_files_builds_the_original_tree_once() {
    let Some(kernel) = kernel() else { return };
    // The kernel's files as a distribution ships them: vmlinux, config and Module.symvers, but
    // no built tree with .cmd files to say which objects include a header.
    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path().join("boot");
    std::fs::create_dir_all(&files).expect("mkdir");
    for file in ["vmlinux", ".config", "Module.symvers"] {
        std::fs::copy(kernel.build.join(file), files.join(file)).expect("copy kernel file");
    }
    let patch = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/build-header-inline/header-inline.patch");
    let run = |output: &str| {
        Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
            .arg("build")
            .arg("--sourcedir")
            .arg(&kernel.source)
            .arg("--vmlinux")
            .arg(files.join("vmlinux"))
            .arg("--output")
            .arg(dir.path().join(output))
            .arg("--json")
            .arg(&patch)
            .output()
            .expect("run kpatch-rs")
    };
    let first = run("a");
    assert!(first.status.success(), "build failed: {}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    let changed: Vec<String> = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .flat_map(|object| {
            let name = object["object"].as_str().unwrap_or("").to_string();
            object["diff"]["functions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |f| format!("{name}:{}", f["name"].as_str().unwrap_or("")))
        })
        .collect();
    assert!(
        changed.contains(&"fs/proc/cmdline.o:cmdline_proc_show".to_string())
            && changed.contains(&"fs/proc/version.o:version_proc_show".to_string()),
        "{changed:?}"
    );
    // The full build is kept: a second run does not build the tree again.
    let second = run("b");
    assert!(
        second.status.success(),
        "rebuild failed: {}",
        stderr(&second)
    );
    assert!(
        !stderr(&second).contains("building the original tree once"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(dir.path().join("a/livepatch-header-inline.ko")).expect("a"),
        std::fs::read(dir.path().join("b/livepatch-header-inline.ko")).expect("b")
    );
}

#[test]
fn a_layout_change_is_refused_unless_allowed_and_then_reported() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out");
    let patch = fixture("fd-data-layout.patch");
    // The test kernel has no CONFIG_DEBUG_INFO: kpatch-rs adds -g to read the layout.
    let refused = build(&kernel, &output, &["--json"], std::slice::from_ref(&patch));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let document: serde_json::Value =
        serde_json::from_slice(&refused.stdout).expect("--json prints a document on refusal");
    assert_eq!(document["refusals"][0]["object"], "fs/proc/fd.o");
    assert_eq!(document["refusals"][0]["symbol"], "struct fd_data");
    let reason = document["refusals"][0]["reason"].as_str().unwrap_or("");
    for part in [
        "member fd moved from offset 4 to offset 8",
        "member lookup added at offset 4 (1 byte)",
        "proc_fd_instantiate",
        "klp_shadow_alloc",
        "--allow-layout-change 'struct fd_data'",
    ] {
        assert!(reason.contains(part), "no `{part}` in: {reason}");
    }
    assert!(!output.exists() || std::fs::read_dir(&output).map(|d| d.count()).unwrap_or(0) == 0);

    let allow = ["--allow-layout-change", "struct fd_data"];
    let built = build(
        &kernel,
        &output,
        &[&allow[..], &["--json"]].concat(),
        std::slice::from_ref(&patch),
    );
    assert_eq!(built.status.code(), Some(0), "{}", stderr(&built));
    let document: serde_json::Value = serde_json::from_slice(&built.stdout).expect("report");
    let object = &document["objects"][0]["diff"];
    assert_eq!(object["layout_checked"], true);
    assert_eq!(
        object["layout_changes_allowed"][0]["type_name"],
        "struct fd_data"
    );
    assert_eq!(object["layout_changes_allowed"][0]["member_added"], true);
    let human = build(&kernel, &output, &allow, &[patch]);
    assert_eq!(human.status.code(), Some(0), "{}", stderr(&human));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("warning: fs/proc/fd.o: the layout change of struct fd_data is allowed"),
        "{text}"
    );
}

/// `sha256sum` of a file, the tool a pipeline checks digests with.
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_json_report_carries_versions_digests_and_times_on_every_outcome() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out");
    let patch = fixture("cmdline.patch");
    let built = build(&kernel, &output, &["--json"], std::slice::from_ref(&patch));
    assert_eq!(built.status.code(), Some(0), "{}", stderr(&built));
    let document: serde_json::Value = serde_json::from_slice(&built.stdout).expect("report");
    assert_eq!(document["schema_version"], 1);
    let tool = document["tool"].as_str().unwrap_or_default();
    assert!(
        tool.starts_with("kpatch-rs ") && tool.contains("(commit "),
        "{tool}"
    );
    let vermagic = document["vermagic"].as_str().unwrap_or_default();
    assert!(vermagic.contains("mod_unload"), "{vermagic}");
    assert_eq!(
        document["kernel_release"].as_str(),
        vermagic.split_whitespace().next()
    );
    let roles: Vec<&str> = document["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter_map(|i| i["role"].as_str())
        .collect();
    assert_eq!(roles, ["patch", "config", "vmlinux", "symvers"]);
    for input in document["inputs"].as_array().expect("inputs") {
        let path = Path::new(input["path"].as_str().expect("path"));
        assert_eq!(
            input["sha256"].as_str(),
            Some(sha256sum(path).as_str()),
            "{path:?}"
        );
    }
    let module = Path::new(document["output"]["path"].as_str().expect("module path"));
    assert_eq!(
        document["output"]["sha256"].as_str(),
        Some(sha256sum(module).as_str())
    );
    assert!(document["timings"].as_array().is_some_and(|t| t.len() >= 6));
    // Piped, the progress is one line per finished phase, in order, with nothing redrawn.
    let progress: Vec<String> = stderr(&built)
        .lines()
        .filter_map(|line| line.strip_prefix("kpatch-rs: ")?.strip_suffix(" s"))
        .filter_map(|rest| {
            let (phase, seconds) = rest.rsplit_once(' ')?;
            seconds.parse::<f64>().ok().map(|_| phase.to_string())
        })
        .collect();
    assert!(
        progress.starts_with(&["inputs", "patched tree", "compile", "diff"].map(String::from)),
        "{progress:?}"
    );
    assert!(!stderr(&built).contains('\r'));

    // A refusal carries the same provenance, the phases that ran, and no output.
    let refused = build(&kernel, &output, &["--json"], &[fixture("data-init.patch")]);
    assert_eq!(refused.status.code(), Some(2));
    let document: serde_json::Value = serde_json::from_slice(&refused.stdout).expect("report");
    assert_eq!(document["schema_version"], 1);
    assert_eq!(document["output"], serde_json::Value::Null);
    assert_eq!(
        document["inputs"][0]["sha256"].as_str().map(str::len),
        Some(64)
    );
    let phases: Vec<&str> = document["timings"]
        .as_array()
        .expect("timings")
        .iter()
        .filter_map(|t| t[0].as_str())
        .collect();
    assert_eq!(phases, ["inputs", "patched tree", "compile", "diff"]);
}

/// On a terminal the running phase has a spinner, redrawn in place.
#[test]
fn progress_on_a_terminal_redraws_the_running_phase() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let command = format!(
        "{} build --sourcedir {} --vmlinux {} --output {} {}",
        env!("CARGO_BIN_EXE_kpatch-rs"),
        kernel.source.display(),
        kernel.build.join("vmlinux").display(),
        dir.path().join("out").display(),
        fixture("data-init.patch").display()
    );
    // `script` runs the build on a pseudo-terminal, as a person at a shell would.
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script (bsdutils)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("\r\x1b[Kkpatch-rs: "),
        "no redrawn phase in: {text:?}"
    );
    assert!(text.contains("kpatch-rs: diff "), "{text}");
}

/// A build log as the commands kpatch-rs ran, each with the work Kbuild printed for it
/// (its quiet lines: `CC fs/proc/cmdline.o`, `HOSTCC ...`, white space collapsed).
fn log_commands(log: &Path) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            commands.push((command.to_string(), Vec::new()));
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        let work = line.starts_with("  ")
            && matches!(
                word,
                "CC" | "HOSTCC" | "HOSTLD" | "LD" | "AS" | "GEN" | "LINK"
            );
        if let (true, Some((_, lines))) = (work, commands.last_mut()) {
            lines.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    commands
}

#[test]
fn the_patched_build_directory_is_a_copy_kbuild_takes_as_prepared_and_the_module_source_compiles_once(
) {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let run = |output: &str, patch: &str| {
        let result = build(
            &kernel,
            &dir.path().join(output),
            &["--cache-dir", &cache_arg],
            &[fixture(patch)],
        );
        assert!(result.status.success(), "build failed: {}", stderr(&result));
        std::fs::read(
            dir.path()
                .join(output)
                .join(format!("livepatch-{}.ko", patch.trim_end_matches(".patch"))),
        )
        .expect("module")
    };
    let first = run("a", "cmdline.patch");
    let entry = std::fs::read_dir(&cache)
        .expect("cache")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join("patched").is_dir())
        .expect("a cache entry");

    // Only the original was prepared, once; the patched build directory is a copy of it, and
    // each tree's object build compiled the unit and nothing of the preparation.
    let unit_only = |commands: &[(String, Vec<String>)]| {
        let builds: Vec<&Vec<String>> = commands
            .iter()
            .filter(|(command, _)| command.ends_with(" fs/proc/cmdline.o"))
            .map(|(_, work)| work)
            .collect();
        assert!(!builds.is_empty(), "no unit build in {commands:#?}");
        for work in builds {
            let compiled: Vec<&String> =
                work.iter().filter(|line| *line != "GEN Makefile").collect();
            assert_eq!(compiled, ["CC fs/proc/cmdline.o"], "{commands:#?}");
        }
    };
    let patched = log_commands(&entry.join("patched.log"));
    assert!(
        patched
            .iter()
            .all(|(c, _)| !c.contains("olddefconfig") && !c.contains("modules_prepare")),
        "{patched:#?}"
    );
    unit_only(&patched);
    let original = log_commands(&entry.join("original.log"));
    assert_eq!(
        original
            .iter()
            .filter(|(c, _)| c.ends_with(" modules_prepare"))
            .count(),
        1,
        "{original:#?}"
    );
    unit_only(&original);
    let copied = std::fs::read_to_string(entry.join("patched/Makefile")).expect("Makefile");
    assert!(copied.contains("patched-source/Makefile"), "{copied}");
    assert!(!entry.join("patched/Module.symvers").exists());

    let main_compiles = || {
        log_commands(&entry.join("original.log"))
            .iter()
            .filter(|(c, _)| c.ends_with(" livepatch-main.o"))
            .count()
    };
    assert_eq!(main_compiles(), 1);
    // The same fix again: the module source is the same, its object is reused.
    let second = run("b", "cmdline.patch");
    assert_eq!(main_compiles(), 1);
    assert!(first == second, "the same inputs must give the same bytes");
    unit_only(&log_commands(&entry.join("patched.log")));
    // A compile killed before its record was written: compiled again, the same bytes.
    std::fs::remove_file(entry.join("module/main/.kpatch-compiled")).expect("record");
    assert!(run("c", "cmdline.patch") == first);
    assert_eq!(main_compiles(), 2);
    // Another fix, another module source.
    run("d", "meminfo.patch");
    assert_eq!(main_compiles(), 3);
}

/// `-t OBJECT` builds only that klp object of the patches: the units of the others are
/// compiled but left out, each listed as skipped with a warning; a target the patches do not
/// touch is an error that names what they touch; a target whose units do not change is no
/// change.
#[test]
fn target_builds_only_the_named_klp_objects_and_reports_the_rest_as_skipped() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let both = [fixture("cmdline.patch"), fixture("kobject.patch")];
    let output = dir.path().join("module");
    let result = build(
        &kernel,
        &output,
        &["--json", "-n", "target", "-t", "kobject-example"],
        &both,
    );
    assert!(result.status.success(), "build failed: {}", stderr(&result));
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json report");
    let klp_objects: Vec<&str> = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["klp_object"].as_str().expect("klp_object"))
        .collect();
    assert_eq!(klp_objects, ["kobject_example"]);
    assert_eq!(
        report["skipped_by_target"],
        serde_json::json!([{ "object": "fs/proc/cmdline.o", "klp_object": "vmlinux" }])
    );
    let warning = "fs/proc/cmdline.o (vmlinux) is touched by the patches but left out of the \
                   module: it is not among --target kobject-example";
    assert!(
        report["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w == warning),
        "{report}"
    );
    assert!(stderr(&result).contains(warning), "{}", stderr(&result));
    let inspect = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["inspect", "--json"])
        .arg(output.join("livepatch-target.ko"))
        .output()
        .expect("run inspect");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let inspection: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    let objects = inspection["patch"]["objects"].as_array().expect("objects");
    assert_eq!(objects.len(), 1, "{inspection}");
    assert_eq!(objects[0]["functions"][0]["old_name"], "foo_show");

    // The human report says it too.
    let human = build(
        &kernel,
        &dir.path().join("human"),
        &["-t", "vmlinux"],
        &both,
    );
    assert!(human.status.success(), "build failed: {}", stderr(&human));
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(
            "warning: samples/kobject/kobject-example.o (kobject_example) is touched by the \
             patches but left out of the module: it is not among --target vmlinux"
        ),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    let untouched = dir.path().join("untouched");
    let result = build(
        &kernel,
        &untouched,
        &["-t", "vmlinux", "--target", "binfmt_misc"],
        &both,
    );
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert!(
        stderr(&result).contains(
            "--target binfmt_misc: the patches touch no unit of it; they touch \
             kobject_example, vmlinux"
        ),
        "{}",
        stderr(&result)
    );
    assert!(!untouched.exists(), "nothing may be written");

    // What the target has of the patches changes no code.
    let unchanged = dir.path().join("unchanged");
    let result = build(
        &kernel,
        &unchanged,
        &["-t", "vmlinux"],
        &[fixture("comment-only.patch"), fixture("kobject.patch")],
    );
    assert_eq!(result.status.code(), Some(3), "{}", stderr(&result));
    assert!(
        stderr(&result).contains("the patches change no code"),
        "{}",
        stderr(&result)
    );
}

/// The fixture out-of-tree module's source (`tests/build-oot-module/module`).
fn oot_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/build-oot-module/module")
}

/// Every file under `dir` with its bytes, sorted: what "never modified" compares.
fn tree_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

/// The fixture module built against the test kernel in a copy of its source under `dir`,
/// as its user would have built it: its `.ko`.
fn build_oot_fixture(kernel: &Kernel, dir: &Path) -> PathBuf {
    let copy = dir.join("built");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for (path, bytes) in tree_contents(&oot_source()) {
        let name = path.file_name().expect("file name");
        std::fs::write(copy.join(name), bytes).expect("copy the module source");
    }
    let make = Command::new("make")
        .arg("-C")
        .arg(&kernel.build)
        .arg(format!("M={}", copy.display()))
        .arg("modules")
        .output()
        .expect("run make");
    assert!(make.status.success(), "{}", stderr(&make));
    copy.join("kpatch-oot-demo.ko")
}

/// `--oot-module FILE.ko --oot-module-src DIR`: the patch applies to the module's source,
/// which stays as it was; the klp object is the module, whose static the patch reaches through
/// a livepatch relocation. A `.ko` that is not the build of that source is refused (exit 2):
/// stripped, of another kernel release, without a function the source defines, or with
/// another function's code under a name the source defines.
#[test]
fn an_out_of_tree_module_is_patched_from_its_source_and_refused_for_another_build() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let ko = build_oot_fixture(&kernel, dir.path());
    let source = oot_source();
    let before = tree_contents(&source);
    let patch =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/build-oot-module/oot-demo.patch");
    let oot = |ko: &Path, source: &Path, output: &Path| {
        let (ko, source) = (ko.display().to_string(), source.display().to_string());
        build(
            &kernel,
            output,
            &[
                "--json",
                "-n",
                "oot",
                "--oot-module",
                &ko,
                "--oot-module-src",
                &source,
            ],
            std::slice::from_ref(&patch),
        )
    };
    let output = dir.path().join("module");
    let result = oot(&ko, &source, &output);
    assert!(result.status.success(), "build failed: {}", stderr(&result));
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json report");
    assert_eq!(report["objects"][0]["object"], "kpatch-oot-demo.o");
    assert_eq!(report["objects"][0]["klp_object"], "kpatch_oot_demo");
    assert_eq!(
        report["objects"][0]["diff"]["functions"][0]["name"],
        "oot_demo_show"
    );
    assert!(
        report["inputs"]
            .as_array()
            .expect("inputs")
            .iter()
            .any(|input| input["role"] == "oot-module" && input["sha256"].is_string()),
        "{report}"
    );
    assert_eq!(
        tree_contents(&source),
        before,
        "the module's source changed"
    );
    let inspect = Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .args(["inspect", "--json"])
        .arg(output.join("livepatch-oot.ko"))
        .output()
        .expect("run inspect");
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let inspection: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    assert_eq!(
        inspection["klp_symbols"],
        serde_json::json!([{ "object": "kpatch_oot_demo", "name": "reads", "sympos": 0 }])
    );
    assert_eq!(
        inspection["patch"]["objects"][0]["target"],
        serde_json::json!({ "module": "kpatch_oot_demo" })
    );

    let refused = |ko: &Path, source: &Path, message: &str| {
        let output = dir.path().join("refused");
        let result = oot(ko, source, &output);
        assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
        assert!(stderr(&result).contains(message), "{}", stderr(&result));
        let document: serde_json::Value = serde_json::from_slice(&result.stdout).expect("json");
        assert_eq!(document["outcome"], "refused");
        assert_eq!(
            document["refusals"][0]["object"],
            format!("out-of-tree module {}", ko.display())
        );
        assert!(!output.join("livepatch-oot.ko").exists());
    };
    let stripped = dir.path().join("stripped.ko");
    let strip = Command::new("strip")
        .arg("--strip-unneeded")
        .arg("-o")
        .arg(&stripped)
        .arg(&ko)
        .output()
        .expect("run strip");
    assert!(strip.status.success(), "{}", stderr(&strip));
    refused(&stripped, &source, "it has no symbol table (stripped)");

    // The same module, as if built for another release (the first digit of its vermagic).
    let mut bytes = std::fs::read(&ko).expect("read the module");
    let at = bytes
        .windows(9)
        .position(|w| w == b"vermagic=")
        .expect("vermagic")
        + 9;
    bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
    let other_release = dir.path().join("other-release.ko");
    std::fs::write(&other_release, &bytes).expect("write");
    refused(&other_release, &source, "it was built for kernel release 9");

    // A source with a function the module does not have is not the module's source.
    let other_source = dir.path().join("other-source");
    std::fs::create_dir_all(&other_source).expect("mkdir");
    for (path, bytes) in &before {
        std::fs::write(other_source.join(path.file_name().expect("name")), bytes).expect("copy");
    }
    let c_file = other_source.join("kpatch-oot-demo.c");
    let mut text = std::fs::read_to_string(&c_file).expect("read");
    text.push_str("\nnoinline int oot_demo_extra(void);\nnoinline int oot_demo_extra(void)\n{\n\treturn reads;\n}\n");
    std::fs::write(&c_file, text).expect("write");
    refused(
        &ko,
        &other_source,
        "defines oot_demo_extra that the module does not have",
    );

    // A function that differs from the module's under the same name (one the patch does not
    // touch): the module is another build, whose code the livepatch must not be built for.
    let other_code = dir.path().join("other-code");
    std::fs::create_dir_all(&other_code).expect("mkdir");
    for (path, bytes) in &before {
        std::fs::write(other_code.join(path.file_name().expect("name")), bytes).expect("copy");
    }
    let c_file = other_code.join("kpatch-oot-demo.c");
    let text = std::fs::read_to_string(&c_file).expect("read");
    let text = text.replace(
        "\tremove_proc_entry(\"kpatch_oot_demo\", NULL);",
        "\treads = 0;\n\tremove_proc_entry(\"kpatch_oot_demo\", NULL);",
    );
    std::fs::write(&c_file, text).expect("write");
    refused(
        &ko,
        &other_code,
        "has other code than the module under the same name (",
    );
    refused(&ko, &other_code, "oot_demo_exit: ");

    // Bad inputs are errors (exit 1).
    let missing = oot(&dir.path().join("none.ko"), &source, &dir.path().join("x"));
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("none.ko does not exist"),
        "{}",
        stderr(&missing)
    );
    let alone = build(
        &kernel,
        &dir.path().join("x"),
        &["--oot-module", &ko.display().to_string()],
        std::slice::from_ref(&patch),
    );
    assert_eq!(alone.status.code(), Some(1), "{}", stderr(&alone));
    assert!(
        stderr(&alone).contains("--oot-module-src"),
        "{}",
        stderr(&alone)
    );
}
