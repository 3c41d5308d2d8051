//! `kpatch-rs batch` against the project's cached 6.12 kernel: two kernels (the test kernel
//! by its vmlinux and by its System.map, which share one cache entry) and patch sets that
//! build, are refused, change nothing, or fail; run as two shards, merged, listed, and with
//! bad manifests.

#![allow(clippy::disallowed_methods, reason = "tests run the binary they test")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, kernel, stderr, Kernel};
use serde_json::Value;

fn batch(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpatch-rs"))
        .arg("batch")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run kpatch-rs batch")
}

/// The manifest, with the patches beside it under `patches/` and named relative to it.
fn write_manifest(kernel: &Kernel, dir: &Path) -> PathBuf {
    let patches = dir.join("patches");
    std::fs::create_dir_all(&patches).expect("mkdir");
    for name in [
        "cmdline.patch",
        "data-init.patch",
        "comment-only.patch",
        "stale.patch",
    ] {
        std::fs::copy(fixture(name), patches.join(name)).expect("copy patch");
    }
    let source = kernel.source.display();
    let build = kernel.build.display();
    // The manifest lists kernels and patch sets out of name order: jobs are sorted anyway.
    let text = format!(
        r#"
[[kernel]]
name = "stock-map"
sourcedir = "{source}"
system_map = "{build}/System.map"
config = "{build}/.config"
symvers = "{build}/Module.symvers"

[[kernel]]
name = "stock"
sourcedir = "{source}"
vmlinux = "{build}/vmlinux"

[[patchset]]
name = "data-init"
patches = ["patches/data-init.patch"]

[[patchset]]
name = "cmdline"
patches = ["patches/cmdline.patch"]

[[patchset]]
name = "comment-only"
patches = ["patches/comment-only.patch"]
kernels = ["stock"]

[[patchset]]
name = "stale"
patches = ["patches/stale.patch"]
kernels = ["stock-map"]
"#
    );
    let path = dir.join("batch.toml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn summary(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read summary")).expect("summary is JSON")
}

fn sha256(path: &Path) -> String {
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

const ALL_JOBS: [&str; 6] = [
    "stock/cmdline",
    "stock/comment-only",
    "stock/data-init",
    "stock-map/cmdline",
    "stock-map/data-init",
    "stock-map/stale",
];

#[test]
fn a_manifest_runs_as_shards_whose_merged_summary_is_every_job_once() {
    let Some(kernel) = kernel() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    write_manifest(&kernel, dir.path());

    // Listing: every job, sorted by kernel name, then patch set name; any number of shards
    // cover them once each.
    let all = batch(&["batch.toml", "--list"], dir.path());
    assert_eq!(all.status.code(), Some(0), "{}", stderr(&all));
    assert_eq!(lines(&all), ALL_JOBS);
    for count in 1..=7 {
        let mut union = Vec::new();
        for index in 1..=count {
            let shard = format!("{index}/{count}");
            let part = batch(&["batch.toml", "--list", "--shard", &shard], dir.path());
            assert_eq!(part.status.code(), Some(0), "{}", stderr(&part));
            union.extend(lines(&part));
        }
        assert_eq!(union, ALL_JOBS, "{count} shards");
    }

    // Shard 1/2 (the stock kernel's jobs) builds, is refused and has no change: exit 2.
    // Shard 2/2 has a patch that does not apply: exit 1.
    let first = batch(
        &["batch.toml", "--shard", "1/2", "-o", "out/1", "-j", "2"],
        dir.path(),
    );
    let second = batch(
        &[
            "batch.toml",
            "--shard",
            "2/2",
            "-o",
            "out/2",
            "-j",
            "2",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(first.status.code(), Some(2), "{}", stderr(&first));
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    let first_lines = lines(&first);
    assert!(
        first_lines.last().is_some_and(|line| line.starts_with(
            "batch: 3 jobs: 1 built, 1 refused, 1 no change, 0 failed; exit 2; summary out/1/summary.json"
        )),
        "{first_lines:?}"
    );
    // --json: the summary on stdout, the same as the file.
    let printed: Value = serde_json::from_slice(&second.stdout).expect("--json summary");
    let out = dir.path().join("out");
    assert_eq!(printed, summary(&out.join("2/summary.json")));
    assert_eq!(
        printed["shard"],
        serde_json::json!({"index": 2, "count": 2})
    );

    let merged = batch(
        &[
            "--merge",
            "out/1/summary.json",
            "out/2/summary.json",
            "-o",
            "out",
        ],
        dir.path(),
    );
    assert_eq!(merged.status.code(), Some(1), "{}", stderr(&merged));
    let whole = summary(&out.join("summary.json"));
    assert_eq!(
        whole["counts"],
        serde_json::json!({"built": 2, "refused": 2, "no-change": 1, "error": 1})
    );
    assert_eq!(whole["exit_code"], 1);
    let mut jobs = Vec::new();
    for (kernel_name, patchsets) in whole["kernels"].as_object().expect("kernels") {
        for patchset in patchsets.as_object().expect("patch sets").keys() {
            jobs.push(format!("{kernel_name}/{patchset}"));
        }
    }
    assert_eq!(jobs, ALL_JOBS);

    let job = |kernel: &str, patchset: &str| whole["kernels"][kernel][patchset].clone();
    // Built: the module where the summary says, with its digest; the same bytes from the
    // vmlinux and from System.map.
    for kernel_name in ["stock", "stock-map"] {
        let built = job(kernel_name, "cmdline");
        assert_eq!(built["outcome"], "built", "{built}");
        assert_eq!(built["exit_code"], 0);
        let module = out.join(built["module"].as_str().expect("module path"));
        let shard = if kernel_name == "stock" { "1" } else { "2" };
        assert_eq!(
            module,
            out.join(shard)
                .join(kernel_name)
                .join("cmdline/livepatch-cmdline.ko")
        );
        assert_eq!(built["sha256"].as_str(), Some(sha256(&module).as_str()));
        assert_eq!(
            built["bytes"].as_u64(),
            Some(module.metadata().expect("module").len())
        );
        let phases: Vec<&str> = built["timings"]
            .as_array()
            .expect("timings")
            .iter()
            .filter_map(|t| t[0].as_str())
            .collect();
        assert_eq!(phases.first(), Some(&"inputs"));
        assert!(built["seconds"].as_f64().is_some_and(|s| s > 0.0));
        assert!(built["started_unix"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000));
    }
    assert_eq!(
        job("stock", "cmdline")["sha256"],
        job("stock-map", "cmdline")["sha256"]
    );

    // Refused, with the refusal and its reason, and no module.
    for kernel_name in ["stock", "stock-map"] {
        let refused = job(kernel_name, "data-init");
        assert_eq!(refused["outcome"], "refused", "{refused}");
        assert_eq!(refused["exit_code"], 2);
        assert_eq!(refused["module"], Value::Null);
        assert_eq!(refused["refusals"][0]["object"], "kernel/panic.o");
        assert_eq!(refused["refusals"][0]["symbol"], "panic_timeout");
        assert!(refused["refusals"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("panic_timeout")));
    }
    let no_change = job("stock", "comment-only");
    assert_eq!(no_change["outcome"], "no-change");
    assert_eq!(no_change["exit_code"], 3);
    let failed = job("stock-map", "stale");
    assert_eq!(failed["outcome"], "error");
    assert_eq!(failed["exit_code"], 1);
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("stale.patch does not apply to fs/proc/cmdline.c")),
        "{failed}"
    );

    // One log per job: the command, the build's own lines, how it ended.
    for name in ALL_JOBS {
        let (kernel_name, patchset) = name.split_once('/').expect("job name");
        let log_path = out.join(job(kernel_name, patchset)["log"].as_str().expect("log"));
        let shard = if kernel_name == "stock" { "1" } else { "2" };
        assert_eq!(
            log_path,
            out.join(shard)
                .join(format!("logs/{kernel_name}--{patchset}.log"))
        );
        let log = std::fs::read_to_string(&log_path).expect("read log");
        assert!(
            log.starts_with("$ ") && log.contains(" build --json "),
            "{log}"
        );
        assert!(log.contains("kpatch-rs: inputs"), "{log}");
        let outcome = job(kernel_name, patchset)["outcome"].clone();
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(
            log.trim_end()
                .lines()
                .last()
                .is_some_and(|last| last.starts_with(&format!("kpatch-rs batch: {outcome} ("))),
            "{log}"
        );
    }
    // No module where none was built.
    assert!(!out
        .join("2/stock-map/data-init/livepatch-data-init.ko")
        .exists());

    // The same shard summaries merged twice over is an error naming the job.
    let twice = batch(
        &[
            "--merge",
            "out/1/summary.json",
            "out/1/summary.json",
            "-o",
            "twice",
        ],
        dir.path(),
    );
    assert_eq!(twice.status.code(), Some(1));
    assert!(
        stderr(&twice).contains("job stock/cmdline is in both"),
        "{}",
        stderr(&twice)
    );
}

#[test]
fn bad_manifests_are_errors_naming_the_line_or_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = "[[kernel]]\nname = \"k\"\nsourcedir = \"s\"\nvmlinux = \"v\"\n\
                [[patchset]]\nname = \"p\"\npatches = [\"p.patch\"]\n";
    let check = |name: &str, text: &str, message: &str| {
        std::fs::write(dir.path().join(name), text).expect("write manifest");
        let output = batch(&[name, "-o", "out"], dir.path());
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
        assert!(
            !dir.path().join("out").exists(),
            "nothing written for {name}"
        );
    };
    check(
        "typo.toml",
        &good.replace("vmlinux", "vmlinx"),
        "typo.toml: line 4 column 1: unknown field `vmlinx`",
    );
    check(
        "kernels.toml",
        &format!("{good}kernels = [\"q\"]\n"),
        "kernels.toml: patchset[0].kernels[0]: no kernel is named \"q\"",
    );
    check(
        "empty.json",
        "{}",
        "empty.json: missing field `kernel` at line 1 column 2",
    );
    check(
        "none.toml",
        "",
        "none.toml: line 1 column 1: missing field `kernel`",
    );
    let output = batch(&["missing.toml"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("cannot read the manifest missing.toml"));
    let output = batch(&["typo.toml", "--shard", "3/2"], dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("shards count from 1"),
        "{}",
        stderr(&output)
    );
}
