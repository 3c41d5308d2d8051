//! `cargo xtask race-stress`: the founding race on a real kernel in QEMU. A module M
//! (`fixtures/race-stress/module/race_target.c`) comes and goes on one CPU while the other
//! enables and disables livepatch P3 over P1 and P2; every time M and a fully enabled P3 are
//! both present, a() in vmlinux and b() in M must report patch 3
//! (`fixtures/race-stress/guest.sh`). The livepatches are hand-written, like
//! `samples/livepatch`, not built by `kpatch-rs build`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::guest::{self, make_executable, Ending, Job, Rootfs};
use crate::kernel::{self, Core, KernelDirs, KernelSpec};
use crate::selftests::{build_modules, copy_tree};

/// The fixture: `module/` (Kbuild, M and P1..P3) and `guest.sh`.
const FIXTURE: &str = "fixtures/race-stress";

/// Where the fixture lives in the guest.
const GUEST_DIR: &str = "/race-stress";

/// Rounds of P3 when none are asked for.
pub const DEFAULT_ROUNDS: u32 = 100;

/// What the guest's last line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub rounds: u32,
    pub checks: u32,
    pub inconsistencies: u32,
}

/// `cargo xtask race-stress [--core c|rust] [--rounds N] [--kernel-build DIR]`
pub fn run(args: &[String]) -> Result<()> {
    let mut core = Core::C;
    let mut rounds = DEFAULT_ROUNDS;
    let mut kernel_build = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{arg} needs {what}"))
        };
        match arg.as_str() {
            "--core" => core = Core::parse(&value("c or rust")?)?,
            "--rounds" => {
                let text = value("a number of rounds")?;
                rounds = text
                    .parse()
                    .with_context(|| format!("--rounds takes a number, not `{text}`"))?;
            }
            "--kernel-build" => {
                kernel_build = Some(std::path::absolute(value("a kernel build directory")?)?)
            }
            other => bail!(
                "unknown argument `{other}` to `cargo xtask race-stress` \
                 (expected --core c|rust, --rounds N, --kernel-build DIR)"
            ),
        }
    }
    let sh = Shell::new()?;
    let kernel = match kernel_build {
        Some(build) => kernel::existing_kernel(&build)?,
        None => kernel::ensure_kernel(&sh, &KernelSpec::for_core(core))?,
    };
    let tally = run_on(&sh, &kernel, rounds)?;
    println!(
        "race-stress: {} rounds, {} checks, {} inconsistencies",
        tally.rounds, tally.checks, tally.inconsistencies
    );
    Ok(())
}

/// Builds the fixture for `kernel`, runs `rounds` rounds in one boot, and fails unless the
/// guest checked at least once and found no inconsistency.
pub fn run_on(sh: &Shell, kernel: &KernelDirs, rounds: u32) -> Result<Tally> {
    let kernel_name = kernel
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".to_string());
    let work = crate::project_root()
        .join("target/race-stress")
        .join(kernel_name);
    let modules = work.join("module");
    if modules.exists() {
        std::fs::remove_dir_all(&modules)
            .with_context(|| format!("cannot remove {}", modules.display()))?;
    }
    let fixture = crate::project_root().join(FIXTURE);
    copy_tree(&fixture.join("module"), &modules)?;
    let log = work.join("build.log");
    std::fs::write(&log, "")?;
    build_modules(kernel, &modules, &log, "race-stress: modules")?;

    let rootfs = Rootfs::new(sh, &work.join("rootfs"))?;
    let guest_dir = Path::new(GUEST_DIR);
    for name in [
        "race_target.ko",
        "race_patch1.ko",
        "race_patch2.ko",
        "race_patch3.ko",
    ] {
        rootfs.copy_file(&modules.join(name), &guest_dir.join(name))?;
    }
    rootfs.copy_file(&fixture.join("guest.sh"), &guest_dir.join("guest.sh"))?;
    make_executable(&rootfs.path(&guest_dir.join("guest.sh")))?;
    let job = Job {
        name: "race-stress".to_string(),
        cwd: GUEST_DIR.to_string(),
        command: format!("./guest.sh {rounds}"),
        // About a second per round under software emulation; a hang is stopped here.
        timeout: Duration::from_secs(120 + 10 * u64::from(rounds)),
    };
    let outcomes = guest::run_jobs(sh, kernel, &rootfs, &[job], &work.join("boot"))?;
    let Some(outcome) = outcomes.first() else {
        bail!("the guest reported no outcome for the race stress");
    };
    let output_file = work.join("race-stress.out");
    std::fs::write(&output_file, &outcome.output)
        .with_context(|| format!("cannot write {}", output_file.display()))?;
    let tally = parse_tally(&outcome.output);
    match (&outcome.ending, tally) {
        (Ending::Exited(0), Some(tally)) if tally.inconsistencies == 0 && tally.checks > 0 => {
            Ok(tally)
        }
        (ending, tally) => {
            let log = outcome
                .console_log
                .as_ref()
                .map(|p| format!("; kernel console log: {}", p.display()))
                .unwrap_or_default();
            bail!(
                "race stress failed on {} ({ending:?}, {tally:?}); guest output in {}{log}",
                kernel.bzimage.display(),
                output_file.display()
            )
        }
    }
}

/// The last `rounds=N checks=N inconsistencies=N` line of the guest's output.
fn parse_tally(output: &str) -> Option<Tally> {
    let line = output.lines().rev().find(|l| l.starts_with("rounds="))?;
    let mut fields = [None; 3];
    for word in line.split_whitespace() {
        let (key, value) = word.split_once('=')?;
        let slot = match key {
            "rounds" => 0,
            "checks" => 1,
            "inconsistencies" => 2,
            _ => return None,
        };
        fields[slot] = Some(value.parse().ok()?);
    }
    Some(Tally {
        rounds: fields[0]?,
        checks: fields[1]?,
        inconsistencies: fields[2]?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(output: &str, expected: Option<(u32, u32, u32)>) {
        let expected = expected.map(|(rounds, checks, inconsistencies)| Tally {
            rounds,
            checks,
            inconsistencies,
        });
        assert_eq!(parse_tally(output), expected);
    }

    #[test]
    fn reads_the_guest_tally() {
        check("rounds=5 checks=9 inconsistencies=0\n", Some((5, 9, 0)));
        check(
            "round 1: a() reports 3, b() reports 2\nmodule loop: 7 loads\nrounds=2 checks=4 inconsistencies=1\n",
            Some((2, 4, 1)),
        );
        check("rounds=5 checks=9\n", None);
        check("rounds=5 checks=x inconsistencies=0\n", None);
        check("rounds=5 checks=1 inconsistencies=0 extra=1\n", None);
        check(
            "timed out waiting for the transition of race_patch3\n",
            None,
        );
        check("", None);
    }
}
