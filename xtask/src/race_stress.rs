//! `cargo xtask race-stress`: the founding race on a real kernel in QEMU. A module M
//! (`fixtures/race-stress/race_target.c`, built into every test kernel's tree as
//! `samples/kpatch-rs/`) comes and goes on one CPU while the other enables and disables
//! livepatch P3 over P1 and P2; every time M and a fully enabled P3 are both present, a() in
//! vmlinux and b() in M must report patch 3 (`fixtures/race-stress/guest.sh`). P1..P3 are
//! built by this workspace's `kpatch-rs build` from `fixtures/race-stress/p{1,2,3}.patch`.
//!
//! On the stock and the Rust-core kernels the stress is a test: everything must be clean. On
//! the pre-fix Rust core (`--core rust-pre-fix`) it is an observation, reported beside what
//! the model predicts for the same race (`kpatch-rs core explore --pre-fix`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::guest::{self, make_executable, Ending, Job, Rootfs};
use crate::kernel::{self, Core, KernelChoice, KernelDirs, KernelSpec};

/// The fixture: `race_target.c` (M), `p1.patch`..`p3.patch` and `guest.sh`.
const FIXTURE: &str = "fixtures/race-stress";

/// Where the fixture lives in the guest.
const GUEST_DIR: &str = "/race-stress";

/// M as Kbuild builds it in a test kernel's build directory (see `kernel::TEST_MODULES`).
const TARGET_MODULE: &str = "samples/kpatch-rs/race_target.ko";

/// Rounds of P3 when none are asked for (and CI's count).
pub const DEFAULT_ROUNDS: u32 = 100;

/// The rounds of `--experiment` when none are asked for.
pub const EXPERIMENT_ROUNDS: u32 = 1000;

/// The race window of `--experiment`'s widened runs, in milliseconds.
pub const EXPERIMENT_WINDOW_MS: u32 = 20;

/// What the guest's last line reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rounds of P3 completed.
    pub rounds: u32,
    /// Times a() and b() were compared with M and P3 present.
    pub checks: u32,
    /// Comparisons where a() or b() did not report patch 3.
    pub inconsistencies: u32,
    /// Failed loads or unloads of M.
    pub m_failures: u32,
    /// Failed loads of P3.
    pub p3_failures: u32,
    /// `WARNING:` splats in the kernel log.
    pub warnings: u32,
    /// `BUG:`/`Oops` lines in the kernel log.
    pub bugs: u32,
    /// The coming notifier's "failed to apply patch" warnings.
    pub apply_failed: u32,
}

impl Tally {
    /// Whether the run is what a kernel with the fix must give: every round done, at least one
    /// check, and nothing wrong.
    pub fn clean(&self, rounds: u32) -> bool {
        self.rounds == rounds
            && self.checks > 0
            && self.inconsistencies == 0
            && self.m_failures == 0
            && self.p3_failures == 0
            && self.warnings == 0
            && self.bugs == 0
            && self.apply_failed == 0
    }

    /// Whether the run shows the race the fix is about, as the model predicts it for the
    /// pre-fix rule: a() and b() disagreeing, or the coming notifier finding P3 already applied
    /// to M (bound while M was COMING).
    pub fn shows_the_race(&self) -> bool {
        self.inconsistencies > 0 || self.apply_failed > 0
    }
}

/// One stress run: what was asked and what the guest showed.
#[derive(Debug, Clone)]
pub struct Observation {
    pub kernel: &'static str,
    pub rounds: u32,
    pub window_ms: u32,
    /// The guest's final tally; `None` when the guest died or hung before printing it.
    pub tally: Option<Tally>,
    /// The last progress line when there is no tally.
    pub progress: Option<String>,
    pub ending: Ending,
    /// Wall time of the boot, host side.
    pub seconds: u64,
    /// The guest's output, kept on the host.
    pub output_file: PathBuf,
    pub console_log: Option<PathBuf>,
}

impl Observation {
    /// Whether the run is clean (see [`Tally::clean`]) and the guest exited 0.
    pub fn clean(&self) -> bool {
        self.ending == Ending::Exited(0) && self.tally.is_some_and(|t| t.clean(self.rounds))
    }

    /// One line: the figures, or how the guest ended.
    pub fn describe(&self) -> String {
        let head = format!(
            "{} window {} ms: {} s",
            self.kernel, self.window_ms, self.seconds
        );
        match (&self.tally, &self.ending) {
            (Some(t), Ending::Exited(_)) => format!(
                "{head}, {}/{} rounds, {} checks, {} inconsistencies, {} M load failures, \
                 {} P3 load failures, {} WARNINGs, {} BUGs, {} \"failed to apply patch\"",
                t.rounds,
                self.rounds,
                t.checks,
                t.inconsistencies,
                t.m_failures,
                t.p3_failures,
                t.warnings,
                t.bugs,
                t.apply_failed
            ),
            (_, ending) => format!(
                "{head}, ended {ending:?} after {}",
                self.progress.as_deref().unwrap_or("no progress line")
            ),
        }
    }
}

/// `cargo xtask race-stress [--core c|rust|rust-pre-fix] [--rounds N] [--window-ms MS]
/// [--kernel-build DIR]`, or `--experiment [--rounds N]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut choice = KernelChoice::default();
    let mut rounds = None;
    let mut window_ms = 0;
    let mut experiment = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs {what}"))
        };
        let number = |text: String| {
            text.parse::<u32>()
                .with_context(|| format!("{arg} takes a number, not `{text}`"))
        };
        if choice.take(arg, &mut value)? {
            continue;
        }
        match arg.as_str() {
            "--rounds" => rounds = Some(number(value("a number of rounds")?)?),
            "--window-ms" => window_ms = number(value("milliseconds")?)?,
            "--experiment" => experiment = true,
            other => bail!(
                "unknown argument `{other}` to `cargo xtask race-stress` (expected {}, \
                 --rounds N, --window-ms MS, --experiment)",
                KernelChoice::USAGE
            ),
        }
    }
    let sh = Shell::new()?;
    if experiment {
        return run_experiment(&sh, rounds.unwrap_or(EXPERIMENT_ROUNDS));
    }
    let rounds = rounds.unwrap_or(DEFAULT_ROUNDS);
    let core = choice.core;
    let kernel = choice.kernel(&sh)?;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;
    let observation = observe(&sh, &kpatch, &kernel, core.name(), rounds, window_ms)?;
    println!("race-stress: {}", observation.describe());
    if core == Core::RustPreFix {
        // An experiment: what it shows is the result.
        return Ok(());
    }
    judge(&observation)
}

/// Fails unless `observation` is clean, naming where the guest's output and log are.
pub fn judge(observation: &Observation) -> Result<()> {
    if observation.clean() {
        return Ok(());
    }
    let log = observation
        .console_log
        .as_ref()
        .map(|p| format!("; kernel console log: {}", p.display()))
        .unwrap_or_default();
    bail!(
        "race stress failed: {}; guest output in {}{log}",
        observation.describe(),
        observation.output_file.display()
    )
}

/// The whole experiment, one run after another: the stress on the stock kernel, on the Rust
/// core as it is and with a widened race window, and on the pre-fix Rust core likewise; then
/// the model's prediction for the pre-fix rule. Fails if a kernel with the fix is not clean.
fn run_experiment(sh: &Shell, rounds: u32) -> Result<()> {
    let kpatch = crate::kpatch::build_kpatch_rs(sh)?;
    let runs = [
        (Core::C, 0),
        (Core::Rust, 0),
        (Core::Rust, EXPERIMENT_WINDOW_MS),
        (Core::RustPreFix, 0),
        (Core::RustPreFix, EXPERIMENT_WINDOW_MS),
    ];
    let mut observations = Vec::new();
    for (core, window_ms) in runs {
        let kernel = kernel::ensure_kernel(sh, &KernelSpec::for_core(core))?;
        let observation = observe(sh, &kpatch, &kernel, core.name(), rounds, window_ms)?;
        println!("race-stress: {}", observation.describe());
        observations.push((core, observation));
    }
    println!("\nthe model's prediction for the pre-fix rule (kpatch-rs core explore --pre-fix):");
    for scenario in ["seed-stacking", "seed-going"] {
        let output = Command::new(&kpatch)
            .args(["core", "explore", "--pre-fix", scenario])
            .output()
            .with_context(|| format!("cannot run {}", kpatch.display()))?;
        println!(
            "  {scenario} (exit {}):",
            output.status.code().unwrap_or(-1)
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            println!("    {line}");
        }
    }
    println!("\nsummary:");
    let mut failed = Vec::new();
    for (core, observation) in &observations {
        let verdict = match (core, observation.clean()) {
            (Core::RustPreFix, _) if observation.tally.is_some_and(|t| t.shows_the_race()) => {
                "race"
            }
            (Core::RustPreFix, _) => "no race",
            (_, true) => "clean",
            (_, false) => {
                failed.push(observation.describe());
                "FAILED"
            }
        };
        println!("  {verdict:8}  {}", observation.describe());
    }
    if !failed.is_empty() {
        bail!(
            "the stress is not clean on a kernel with the fix:\n  {}",
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Builds P1..P3 with `kpatch-rs build` against `kernel`, runs `rounds` rounds with
/// `window_ms` in one boot, and returns what the guest showed.
pub fn observe(
    sh: &Shell,
    kpatch: &Path,
    kernel: &KernelDirs,
    name: &'static str,
    rounds: u32,
    window_ms: u32,
) -> Result<Observation> {
    let work = crate::project_root()
        .join("target/race-stress")
        .join(format!("{name}-window-{window_ms}"));
    let fixture = crate::project_root().join(FIXTURE);
    let target = kernel.build.join(TARGET_MODULE);
    if !target.is_file() {
        bail!(
            "{} is missing: the kernel was not built with the project's test modules \
             (cargo xtask kernel builds them)",
            target.display()
        );
    }
    if window_ms > 0 && !kernel.has_rust_core() {
        bail!(
            "--window-ms needs a Rust-core kernel (--core rust or rust-pre-fix): the race \
             window is its test parameter livepatch.race_window_ms, which the stock kernel lacks"
        );
    }
    let rootfs = Rootfs::new(sh, &work.join("rootfs"))?;
    let guest_dir = Path::new(GUEST_DIR);
    for n in 1..=3 {
        let module = build_livepatch(kpatch, kernel, &fixture, &work, n)?;
        let file = format!("livepatch-race{n}.ko");
        rootfs.copy_file(&module, &guest_dir.join(file))?;
    }
    rootfs.copy_file(&target, &guest_dir.join("race_target.ko"))?;
    rootfs.copy_file(&fixture.join("guest.sh"), &guest_dir.join("guest.sh"))?;
    make_executable(&rootfs.path(&guest_dir.join("guest.sh")))?;
    let job = Job {
        name: "race-stress".to_string(),
        cwd: GUEST_DIR.to_string(),
        command: format!("./guest.sh {rounds} {window_ms}"),
        // About a second per round under software emulation; a hang is stopped here.
        timeout: Duration::from_secs(120 + 10 * u64::from(rounds)),
    };
    eprintln!("race-stress: {name}, {rounds} rounds, window {window_ms} ms");
    let started = Instant::now();
    let outcomes = guest::run_jobs(sh, kernel, &rootfs, &[job], &work.join("boot"))?;
    let seconds = started.elapsed().as_secs();
    let Some(outcome) = outcomes.into_iter().next() else {
        bail!("the guest reported no outcome for the race stress");
    };
    let output_file = work.join("race-stress.out");
    std::fs::write(&output_file, &outcome.output)
        .with_context(|| format!("cannot write {}", output_file.display()))?;
    let progress = outcome
        .output
        .lines()
        .rev()
        .find(|l| l.starts_with("progress:"))
        .map(str::to_string);
    Ok(Observation {
        kernel: name,
        rounds,
        window_ms,
        tally: parse_tally(&outcome.output),
        progress,
        ending: outcome.ending,
        seconds,
        output_file,
        console_log: outcome.console_log,
    })
}

/// `kpatch-rs build --no-replace --name raceN pN.patch` against `kernel`; returns the module.
fn build_livepatch(
    kpatch: &Path,
    kernel: &KernelDirs,
    fixture: &Path,
    work: &Path,
    n: u32,
) -> Result<PathBuf> {
    let output_dir = work.join(format!("kpatch/race{n}"));
    let log = work.join(format!("race{n}.build.log"));
    let mut command =
        crate::kpatch::kpatch_build_command(kpatch, kernel, &format!("race{n}"), &output_dir)?;
    command
        .arg("--no-replace")
        .arg(fixture.join(format!("p{n}.patch")));
    crate::process::run_logged(
        &mut command,
        &log,
        &format!("race-stress: kpatch-rs build p{n}.patch"),
    )?;
    let module = output_dir.join(format!("livepatch-race{n}.ko"));
    if !module.is_file() {
        bail!(
            "kpatch-rs build p{n}.patch wrote no {} (log: {})",
            module.display(),
            log.display()
        );
    }
    Ok(module)
}

/// The last `rounds=N checks=N ...` line of the guest's output: every field of [`Tally`]
/// present, nothing else.
fn parse_tally(output: &str) -> Option<Tally> {
    let line = output.lines().rev().find(|l| l.starts_with("rounds="))?;
    let mut fields: [Option<u32>; 8] = [None; 8];
    for word in line.split_whitespace() {
        let (key, value) = word.split_once('=')?;
        let slot = match key {
            "rounds" => 0,
            "checks" => 1,
            "inconsistencies" => 2,
            "m_failures" => 3,
            "p3_failures" => 4,
            "warnings" => 5,
            "bugs" => 6,
            "apply_failed" => 7,
            _ => return None,
        };
        if fields[slot].replace(value.parse().ok()?).is_some() {
            return None;
        }
    }
    Some(Tally {
        rounds: fields[0]?,
        checks: fields[1]?,
        inconsistencies: fields[2]?,
        m_failures: fields[3]?,
        p3_failures: fields[4]?,
        warnings: fields[5]?,
        bugs: fields[6]?,
        apply_failed: fields[7]?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "rounds=5 checks=9 inconsistencies=1 m_failures=2 p3_failures=3 \
                        warnings=4 bugs=5 apply_failed=6";

    #[test]
    fn reads_the_guest_tally() {
        let tally = parse_tally(&format!(
            "round 1: a() reports 3, b() reports 2\nmodule loop: 7 loads\n{FULL}\n"
        ));
        assert_eq!(
            tally,
            Some(Tally {
                rounds: 5,
                checks: 9,
                inconsistencies: 1,
                m_failures: 2,
                p3_failures: 3,
                warnings: 4,
                bugs: 5,
                apply_failed: 6,
            })
        );
        // A field missing, unreadable, repeated or unknown: no tally.
        assert_eq!(parse_tally("rounds=5 checks=9 inconsistencies=0\n"), None);
        assert_eq!(parse_tally(&FULL.replace("checks=9", "checks=x")), None);
        assert_eq!(parse_tally(&format!("{FULL} rounds=5")), None);
        assert_eq!(parse_tally(&format!("{FULL} extra=1")), None);
        assert_eq!(
            parse_tally("timed out waiting for the transition of livepatch_race3\n"),
            None
        );
        assert_eq!(parse_tally(""), None);
    }

    #[test]
    fn clean_needs_every_round_a_check_and_nothing_wrong() {
        let clean = Tally {
            rounds: 10,
            checks: 3,
            ..Tally::default()
        };
        assert!(clean.clean(10));
        assert!(!clean.clean(11));
        assert!(!Tally { checks: 0, ..clean }.clean(10));
        for dirty in [
            Tally {
                inconsistencies: 1,
                ..clean
            },
            Tally {
                m_failures: 1,
                ..clean
            },
            Tally {
                p3_failures: 1,
                ..clean
            },
            Tally {
                warnings: 1,
                ..clean
            },
            Tally { bugs: 1, ..clean },
            Tally {
                apply_failed: 1,
                ..clean
            },
        ] {
            assert!(!dirty.clean(10), "{dirty:?}");
        }
        // The race shows as disagreeing reports or an already applied P3; failed loads and
        // warnings alone can have other causes.
        assert!(!clean.shows_the_race());
        assert!(Tally {
            inconsistencies: 1,
            ..clean
        }
        .shows_the_race());
        assert!(Tally {
            apply_failed: 1,
            ..clean
        }
        .shows_the_race());
        assert!(!Tally {
            warnings: 3,
            m_failures: 2,
            ..clean
        }
        .shows_the_race());
    }
}
