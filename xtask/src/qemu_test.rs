//! `cargo xtask qemu-test`: the upstream livepatch selftests and the `tests/` cases, each
//! group run in one boot of the cached kernel under QEMU, one line per script or case and
//! a final `N passed, N failed` line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::guest::{self, Ending, Outcome, Rootfs};
use crate::kernel::{KernelChoice, KernelDirs};
use crate::{cases, selftests};

/// How many scripts and cases passed and failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    /// Disabled cases: neither passed nor failed, and named in the summary.
    pub skipped: usize,
}

impl Tally {
    pub fn summary(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        line
    }
}

/// Which groups to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Selftests,
    Cases,
}

/// `cargo xtask qemu-test [--core c|rust|rust-pre-fix] [--fragment FILE]... [--kernel-build DIR]
/// [--tests DIR] [--only selftests|cases] [--case NAME]...`; `--case` runs just the cases named.
pub fn run(args: &[String]) -> Result<()> {
    let mut choice = KernelChoice::default();
    let mut only = Only::All;
    let mut tests_dir = crate::project_root().join("tests");
    let mut chosen = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs {what}"))
        };
        if choice.take(arg, &mut value)? {
            continue;
        }
        match arg.as_str() {
            "--tests" => tests_dir = std::path::absolute(value("a directory of cases")?)?,
            "--only" => {
                only = match value("selftests or cases")?.as_str() {
                    "selftests" => Only::Selftests,
                    "cases" => Only::Cases,
                    other => bail!("--only takes selftests or cases, not `{other}`"),
                }
            }
            "--case" => chosen.push(value("a case name")?),
            other => bail!(
                "unknown argument `{other}` to `cargo xtask qemu-test` \
                 (expected {}, --tests DIR, --only selftests|cases, --case NAME)",
                KernelChoice::USAGE
            ),
        }
    }
    if !chosen.is_empty() {
        if only == Only::Selftests {
            bail!("--case names cases; it cannot go with --only selftests");
        }
        only = Only::Cases;
    }
    let sh = Shell::new()?;
    let kernel = choice.kernel(&sh)?;
    let (tally, _) = run_all(&sh, &kernel, only, &tests_dir, &chosen)?;
    println!("{}", tally.summary());
    if tally.failed > 0 {
        bail!(
            "{} of {} QEMU tests failed",
            tally.failed,
            tally.passed + tally.failed
        );
    }
    Ok(())
}

/// One selftest script's name and whether it passed, for side-by-side reports.
pub type Verdicts = Vec<(String, bool)>;

/// Runs the selftests and the cases on `kernel`; prints one line per script or case
/// and returns the tally and each selftest script's verdict.
pub fn run_everything_verdicts(sh: &Shell, kernel: &KernelDirs) -> Result<(Tally, Verdicts)> {
    run_all(
        sh,
        kernel,
        Only::All,
        &crate::project_root().join("tests"),
        &[],
    )
}

/// Runs only the upstream selftests on `kernel`; prints one line per script.
pub fn run_selftests_verdicts(sh: &Shell, kernel: &KernelDirs) -> Result<(Tally, Verdicts)> {
    run_all(
        sh,
        kernel,
        Only::Selftests,
        &crate::project_root().join("tests"),
        &[],
    )
}

/// Runs only the cases of `tests_dir` on `kernel`; prints one line per case.
pub fn run_cases(sh: &Shell, kernel: &KernelDirs, tests_dir: &Path) -> Result<Tally> {
    run_all(sh, kernel, Only::Cases, tests_dir, &[]).map(|(tally, _)| tally)
}

/// Runs the groups `only` names; `chosen` narrows the cases to those names (all when empty).
fn run_all(
    sh: &Shell,
    kernel: &KernelDirs,
    only: Only,
    tests_dir: &Path,
    chosen: &[String],
) -> Result<(Tally, Verdicts)> {
    let kernel_name = kernel
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".to_string());
    let work = crate::project_root()
        .join("target/qemu-test")
        .join(kernel_name);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    eprintln!(
        "qemu-test: kernel {}, logs in {}",
        kernel.bzimage.display(),
        work.display()
    );
    let mut tally = Tally::default();
    let mut selftest_verdicts = Verdicts::new();

    if only != Only::Cases {
        let rootfs = Rootfs::new(sh, &work.join("selftests/rootfs"))?;
        let jobs = selftests::jobs(kernel, &rootfs, &work.join("selftests"))?;
        let outcomes = guest::run_jobs(sh, kernel, &rootfs, &jobs, &work.join("selftests/boot"))?;
        for outcome in &outcomes {
            save_output(&work.join("selftests/boot"), outcome)?;
            let verdict = judge_selftest(outcome);
            selftest_verdicts.push((outcome.name.clone(), verdict.is_ok()));
            report("selftest", outcome, &verdict, &mut tally);
        }
    }

    if only != Only::Selftests {
        let series = cases::kernel_series(&kernel.source)?;
        let found =
            cases::for_series(cases::choose(cases::discover(tests_dir)?, chosen)?, &series)?;
        if found.is_empty() {
            bail!(
                "no cases found in {} (a case is a directory with guest.sh)",
                tests_dir.display()
            );
        }
        let rootfs = Rootfs::new(sh, &work.join("cases/rootfs"))?;
        let started = std::time::Instant::now();
        let staged = cases::stage(sh, kernel, &rootfs, &found, &work.join("cases"))?;
        let host_seconds = started.elapsed().as_secs();
        let jobs: Vec<guest::Job> = staged
            .iter()
            .filter_map(|p| match p {
                cases::Staged::Guest(job) => Some(job.clone()),
                _ => None,
            })
            .collect();
        let mut outcomes = if jobs.is_empty() {
            Vec::new()
        } else {
            guest::run_jobs(sh, kernel, &rootfs, &jobs, &work.join("cases/boot"))?
        }
        .into_iter();
        for (case, staged) in found.iter().zip(&staged) {
            match staged {
                cases::Staged::Skipped(reason) => {
                    tally.skipped += 1;
                    println!("SKIP  case {}: {reason}", case.name);
                }
                cases::Staged::Host { verdict, seconds } => {
                    let outcome = Outcome {
                        name: case.name.clone(),
                        ending: Ending::Exited(0),
                        output: String::new(),
                        seconds: Some(*seconds),
                        console_log: None,
                    };
                    report("case", &outcome, verdict, &mut tally);
                }
                cases::Staged::Guest(_) => {
                    let Some(outcome) = outcomes.next() else {
                        bail!("the guest returned fewer results than cases it ran");
                    };
                    save_output(&work.join("cases/boot"), &outcome)?;
                    let verdict = cases::judge(case, &outcome);
                    report("case", &outcome, &verdict, &mut tally);
                    for figure in cases::figures(&outcome.output) {
                        println!("      {figure}");
                    }
                }
            }
        }
        eprintln!(
            "qemu-test: cases took {}s ({host_seconds}s of builds on the host, the rest in \
             the guest)",
            started.elapsed().as_secs()
        );
    }
    Ok((tally, selftest_verdicts))
}

fn save_output(dir: &Path, outcome: &Outcome) -> Result<()> {
    let file = dir.join(format!("{}.out", outcome.name));
    std::fs::write(&file, &outcome.output)
        .with_context(|| format!("cannot write {}", file.display()))
}

/// A selftest script passes when it exits 0; 4 is kselftest's "skip", which counts as a
/// failure here because every script must run on the test kernel.
fn judge_selftest(outcome: &Outcome) -> std::result::Result<(), String> {
    match &outcome.ending {
        Ending::Exited(0) => Ok(()),
        Ending::Exited(4) => Err("skipped (kselftest exit code 4)".to_string()),
        Ending::TimedOut => Err(format!(
            "timed out after {}s",
            selftests::SCRIPT_TIMEOUT.as_secs()
        )),
        Ending::Exited(code) => Err(format!("exited {code}")),
        Ending::GuestLost(why) => Err(why.clone()),
    }
}

/// The number of `TEST: ... ok` lines a selftest script printed.
fn subtests_ok(output: &str) -> usize {
    output
        .lines()
        .filter(|l| l.starts_with("TEST: ") && l.trim_end().ends_with("... ok"))
        .count()
}

fn report(
    kind: &str,
    outcome: &Outcome,
    verdict: &std::result::Result<(), String>,
    tally: &mut Tally,
) {
    let ok = subtests_ok(&outcome.output);
    let mut details = Vec::new();
    if ok > 0 {
        details.push(format!("{ok} tests ok"));
    }
    if let Some(seconds) = outcome.seconds {
        details.push(format!("{seconds}s"));
    }
    let detail = if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join(", "))
    };
    match verdict {
        Ok(()) => {
            tally.passed += 1;
            println!("PASS  {kind} {}{detail}", outcome.name);
        }
        Err(why) => {
            tally.failed += 1;
            println!("FAIL  {kind} {}: {why}", outcome.name);
            // A case whose output differed already shows it in the verdict.
            if !why.contains("--- actual") {
                for line in outcome.output.lines() {
                    println!("      | {line}");
                }
            }
            if let Some(log) = &outcome.console_log {
                println!("      kernel console log: {}", log.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ending: Ending, output: &str) -> Outcome {
        Outcome {
            name: "t".to_string(),
            ending,
            output: output.to_string(),
            seconds: None,
            console_log: None,
        }
    }

    #[test]
    fn selftest_passes_only_on_exit_zero() {
        assert!(judge_selftest(&outcome(Ending::Exited(0), "")).is_ok());
        for ending in [
            Ending::Exited(1),
            Ending::Exited(4),
            Ending::TimedOut,
            Ending::GuestLost("the kernel panicked".to_string()),
        ] {
            assert!(
                judge_selftest(&outcome(ending.clone(), "")).is_err(),
                "{ending:?}"
            );
        }
    }

    #[test]
    fn counts_passed_subtests() {
        let output = "TEST: a ... ok\nTEST: b ... not ok\n\nsomething\nTEST: c ... ok\n";
        assert_eq!(subtests_ok(output), 2);
        assert_eq!(subtests_ok(""), 0);
    }

    #[test]
    fn tally_summary_line() {
        let mut tally = Tally {
            passed: 8,
            failed: 1,
            skipped: 0,
        };
        assert_eq!(tally.summary(), "8 passed, 1 failed");
        tally.skipped = 2;
        assert_eq!(tally.summary(), "8 passed, 1 failed, 2 skipped");
    }
}
