//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the fuzz targets of `fuzz/` under libFuzzer,
//! each for a bounded time.
//!
//! The seed corpus is written anew each run by `kpatch-fuzz seeds` (the C fixtures compiled,
//! the committed patches and System.map excerpt, and the kernel object pairs of `cargo xtask
//! fixtures` when they are there). `fuzz/libfuzzer/` is built on the stable toolchain with
//! SanitizerCoverage switched on by `-C passes=sancov-module` and its `-C llvm-args` (the
//! instrumentation cargo-fuzz asks for, without the nightly-only sanitizers); libFuzzer then
//! treats a panic (abort), an input slower than [`INPUT_TIMEOUT`] seconds and a process over
//! [`RSS_LIMIT_MB`] as crashes, and writes the input to `target/fuzz/artifacts/TARGET/`.
//! What each target finds that is new stays in `target/fuzz/corpus/TARGET/` for the next
//! run. One `fuzz: PASS` or `fuzz: FAIL` line per target; any crash fails the command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The targets of `fuzz/src/lib.rs`, in its order.
pub const TARGETS: &[&str] = &["elf", "diff", "system_map", "patch"];

/// Seconds per target unless `--seconds` says otherwise.
const DEFAULT_SECONDS: u64 = 60;

/// One input running longer than this many seconds is a crash (a hang).
const INPUT_TIMEOUT: u64 = 10;

/// A process growing past this many MiB is a crash (memory the input should not cost), and
/// so is one allocation of more than [`MALLOC_LIMIT_MB`].
const RSS_LIMIT_MB: u64 = 2048;
const MALLOC_LIMIT_MB: u64 = 1024;

/// The instrumentation that makes libFuzzer coverage-guided; all stable `-C` options.
const COVERAGE_FLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
];

struct Options {
    seconds: u64,
    targets: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        seconds: DEFAULT_SECONDS,
        targets: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                options.seconds = value
                    .parse()
                    .ok()
                    .filter(|&seconds| seconds > 0)
                    .with_context(|| format!("--seconds {value}: not a positive number"))?;
            }
            target if TARGETS.contains(&target) => options.targets.push(target.to_string()),
            other => bail!(
                "`cargo xtask fuzz` takes [--seconds N] [TARGET...] with TARGET one of {}; got `{other}`",
                TARGETS.join(", ")
            ),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let root = crate::project_root();
    let work = root.join("target/fuzz");
    let seeds = work.join("seeds");
    write_seeds(&root, &seeds)?;
    let binaries = build(&root, &work)?;
    let mut failed = Vec::new();
    for target in &options.targets {
        let verdict = fuzz_one(&root, &work, &binaries, &seeds, target, options.seconds);
        match verdict {
            Ok(stats) => println!(
                "fuzz: PASS {target}: {} executions in {} s ({} per second), corpus of {} inputs, no crash",
                stats.executions,
                stats.seconds,
                stats.executions / stats.seconds.max(1),
                stats.corpus
            ),
            Err(error) => {
                println!("fuzz: FAIL {target}: {error:#}");
                failed.push(target.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing found crashes in {}", failed.join(", "));
    }
    Ok(())
}

fn write_seeds(root: &Path, seeds: &Path) -> Result<()> {
    if seeds.exists() {
        std::fs::remove_dir_all(seeds)
            .with_context(|| format!("cannot clear {}", seeds.display()))?;
    }
    let mut command = Command::new("cargo");
    command
        .current_dir(root)
        .args(["run", "-q", "-p", "kpatch-fuzz", "--", "seeds"])
        .arg(seeds);
    // The kernel object pairs, when `cargo xtask fixtures` has built them.
    let fixtures = crate::cache_dir("fixtures")?.join("latest");
    if fixtures.join("complete").is_file() {
        command.arg(&fixtures);
    } else {
        eprintln!(
            "fuzz: no kernel fixtures in {} (cargo xtask fixtures); seeds from the C fixtures only",
            fixtures.display()
        );
    }
    let status = command.status().context("cannot run kpatch-fuzz seeds")?;
    if !status.success() {
        bail!("kpatch-fuzz seeds failed ({status})");
    }
    Ok(())
}

/// Builds the libFuzzer binaries; returns the directory that holds them.
fn build(root: &Path, work: &Path) -> Result<PathBuf> {
    let host = host_triple()?;
    let target_dir = work.join("build");
    let log = work.join("build.log");
    let started = Instant::now();
    // With an explicit --target, RUSTFLAGS reach only the target's crates, not build
    // scripts (which the coverage pass would break).
    let mut command = Command::new("cargo");
    command
        .current_dir(root.join("fuzz/libfuzzer"))
        .args(["build", "--release", "--locked", "--target", &host])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", COVERAGE_FLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    std::fs::create_dir_all(work)?;
    std::fs::write(&log, "")?;
    crate::process::run_logged(&mut command, &log, "fuzz: building the libFuzzer targets")?;
    eprintln!(
        "fuzz: libFuzzer targets built in {} s",
        started.elapsed().as_secs()
    );
    Ok(target_dir.join(host).join("release"))
}

fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(|host| host.trim().to_string())
        .context("rustc -vV names no host")
}

struct Stats {
    executions: u64,
    seconds: u64,
    corpus: usize,
}

fn fuzz_one(
    root: &Path,
    work: &Path,
    binaries: &Path,
    seeds: &Path,
    target: &str,
    seconds: u64,
) -> Result<Stats> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let regressions = root.join("fuzz/regressions").join(target);
    for directory in [&corpus, &artifacts] {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
    }
    let before = list(&artifacts);
    let log = work.join(format!("{target}.log"));
    std::fs::write(&log, "")?;
    // The first directory is where libFuzzer adds what it finds; the others are read.
    let mut command = Command::new(binaries.join(target));
    command.arg(&corpus).arg(seeds.join(target));
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    let started = Instant::now();
    let label = format!("fuzz: {target} for {seconds} s");
    // libFuzzer stops itself; the margin covers reading the corpus and a hang it misses.
    let limit = Duration::from_secs(seconds + 120);
    let status = crate::process::run_logged_status(&mut command, &log, &label, Some(limit))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let found: Vec<PathBuf> = list(&artifacts)
            .into_iter()
            .filter(|path| !before.contains(path))
            .collect();
        crate::process::print_tail(&log);
        let Some(input) = found.first() else {
            bail!(
                "libFuzzer exited with {status} and wrote no input; log: {}",
                log.display()
            );
        };
        bail!(
            "{} after {} s: {}; reproduce with `cargo run -p kpatch-fuzz -- replay {target} {}` \
             (libFuzzer's own: `{} {}`), minimise with `{} -minimize_crash=1 -runs=100000 {}`; \
             log: {}",
            kind_of(input),
            started.elapsed().as_secs(),
            input.display(),
            input.display(),
            binaries.join(target).display(),
            input.display(),
            binaries.join(target).display(),
            input.display(),
            log.display()
        );
    }
    let stat = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let executions = stat("stat::number_of_executed_units:")
        .with_context(|| format!("libFuzzer printed no statistics; log: {}", log.display()))?;
    Ok(Stats {
        executions,
        seconds: started.elapsed().as_secs(),
        corpus: list(&corpus).len(),
    })
}

/// What libFuzzer's artifact name says the input did: `crash-`, `timeout-`, `oom-`, ...
fn kind_of(input: &Path) -> &'static str {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("timeout-") || name.starts_with("slow-unit-") {
        "an input ran too long"
    } else if name.starts_with("oom-") {
        "an input used too much memory"
    } else {
        "an input crashed the target"
    }
}

fn list(directory: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_are_those_of_the_fuzz_crate() {
        let source = std::fs::read_to_string(crate::project_root().join("fuzz/src/lib.rs"))
            .expect("read fuzz/src/lib.rs");
        let named: Vec<&str> = source
            .lines()
            .skip_while(|line| !line.starts_with("pub const TARGETS"))
            .take_while(|line| !line.starts_with("];"))
            .filter_map(|line| line.trim().strip_prefix("name: \""))
            .filter_map(|rest| rest.strip_suffix("\","))
            .collect();
        assert_eq!(named, TARGETS);
        for target in TARGETS {
            let bin = crate::project_root().join(format!("fuzz/libfuzzer/src/bin/{target}.rs"));
            assert!(bin.is_file(), "no libFuzzer entry {}", bin.display());
        }
    }

    #[test]
    fn arguments_pick_targets_and_time() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let options = parse(&args(&["--seconds", "5", "patch"])).expect("parse");
        assert_eq!(
            (options.seconds, options.targets),
            (5, vec!["patch".into()])
        );
        let options = parse(&[]).expect("parse");
        assert_eq!(options.seconds, DEFAULT_SECONDS);
        assert_eq!(options.targets, TARGETS);
        assert!(parse(&args(&["--seconds", "0"])).is_err());
        assert!(parse(&args(&["nosuch"])).is_err());
    }
}
