//! `cargo xtask int3-repro`: rewrites the kernel's `cond_resched()` static-call sites in a
//! loop, in QEMU, with every CPU online and busy, and counts the `Oops: int3` the kernel logs.
//!
//! A livepatch transition switches `cond_resched` to `klp_cond_resched` and back
//! (`sched_dynamic_klp_enable`/`_disable` on a `PREEMPT_DYNAMIC` kernel): every call site is
//! rewritten by `text_poke_bp`, through an int3 breakpoint. Writing a preempt mode to
//! `/sys/kernel/debug/sched/preempt` rewrites the same sites (and those of `might_resched`,
//! `preempt_schedule`, `irqentry_exit_cond_resched`) the same way, without any livepatch.
//! `--load preempt` loops over the three modes; `--load livepatch` loads, disables and unloads
//! a kpatch-rs livepatch of `/proc/cmdline` instead, two transitions a round. The kernel is
//! Debian's own vmlinuz (`--kernel debian`, from `cargo xtask distro-test`'s packages) or the
//! stock test kernel with `PREEMPT_DYNAMIC` (`--kernel stock`,
//! `fixtures/kernel-config/preempt-dynamic.config`), on QEMU's TCG with one host thread for
//! all vCPUs (`--tcg single`) or one each (`--tcg multi`). The guest boots without
//! `oops=panic`, so a run counts every oops until the time is up or the kernel dies; the
//! counts come from the kernel console log, which keeps every line the guest's `dmesg` ring
//! may have dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::guest::{run_jobs_on, Ending, Job, Machine, Rootfs, TcgThreads};
use crate::kernel::{ensure_kernel, KernelDirs, KernelSpec};

/// The fragment that gives the stock test kernel `PREEMPT_DYNAMIC`.
pub const PREEMPT_DYNAMIC_FRAGMENT: &str = "fixtures/kernel-config/preempt-dynamic.config";

/// The livepatch of `--load livepatch`, per kernel: `/proc/cmdline` gets a suffix.
const STOCK_PATCH: &str = "fixtures/patches/cmdline.patch";
const DEBIAN_PATCH: &str = "fixtures/distro/cmdline.patch";
/// The livepatch's name (`livepatch-NAME.ko`, `/sys/kernel/livepatch/livepatch_NAME`).
const MODULE_NAME: &str = "int3";

/// The CI check's bounds: on Debian's kernel, one TCG thread, both vCPUs busy, a mode switch
/// rewrites 720 to 3,125 call sites and takes 20 to 110 s on the shared 2-core machine; the
/// loop stops after [`CI_SECONDS`] or [`CI_SWITCHES`], and must have finished at least
/// [`CI_MIN_SWITCHES`] (the first, voluntary to full, rewrites 3,125 sites).
pub const CI_SWITCHES: u64 = 30;
pub const CI_SECONDS: u64 = 90;
pub const CI_MIN_SWITCHES: u64 = 1;

const USAGE: &str = "cargo xtask int3-repro [--kernel stock|debian] [--tcg single|multi] \
    [--cpus N] [--load preempt|livepatch] [--seconds N] [--switches N] [--boots N], or --ci";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Stock,
    Debian,
}

impl Kernel {
    fn parse(text: &str) -> Result<Kernel> {
        match text {
            "stock" => Ok(Kernel::Stock),
            "debian" => Ok(Kernel::Debian),
            other => bail!("unknown kernel `{other}` (expected stock or debian)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Stock => "stock",
            Kernel::Debian => "debian",
        }
    }
}

/// What rewrites the static-call sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Preempt mode switches through debugfs: no livepatch at all.
    Preempt,
    /// Livepatch transitions: load, disable, unload a kpatch-rs livepatch.
    Livepatch,
}

impl Load {
    fn parse(text: &str) -> Result<Load> {
        match text {
            "preempt" => Ok(Load::Preempt),
            "livepatch" => Ok(Load::Livepatch),
            other => bail!("unknown load `{other}` (expected preempt or livepatch)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Load::Preempt => "preempt",
            Load::Livepatch => "livepatch",
        }
    }

    /// What one counted step is.
    fn unit(self) -> &'static str {
        match self {
            Load::Preempt => "preempt mode switches",
            Load::Livepatch => "livepatch transitions",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kernel: Kernel,
    pub machine: Machine,
    pub load: Load,
    /// Each boot's time limit for the loop.
    pub seconds: u64,
    /// Each boot's step limit (0: none).
    pub switches: u64,
    pub boots: u32,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            kernel: Kernel::Debian,
            machine: Machine {
                panic_on_oops: false,
                ..Machine::DEFAULT
            },
            load: Load::Preempt,
            seconds: 180,
            switches: 0,
            boots: 1,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{arg} needs a value\nusage: {USAGE}"))
            };
            let number = |text: &String| -> Result<u64> {
                text.parse()
                    .with_context(|| format!("{arg} takes a number, got `{text}`"))
            };
            match arg.as_str() {
                "--kernel" => options.kernel = Kernel::parse(value()?)?,
                "--tcg" => options.machine.tcg = TcgThreads::parse(value()?)?,
                "--cpus" => {
                    let cpus = number(value()?)?;
                    if !(1..=8).contains(&cpus) {
                        bail!("--cpus takes 1 to 8, got {cpus}");
                    }
                    options.machine.cpus = cpus as u32;
                }
                "--load" => options.load = Load::parse(value()?)?,
                "--seconds" => options.seconds = number(value()?)?.max(1),
                "--switches" => options.switches = number(value()?)?,
                "--boots" => options.boots = number(value()?)?.clamp(1, 1000) as u32,
                other => bail!("unknown option `{other}`\nusage: {USAGE}"),
            }
        }
        Ok(options)
    }

    fn describe(&self) -> String {
        format!(
            "kernel {}, tcg thread={}, {} vCPUs, load {}",
            self.kernel.name(),
            self.machine.tcg.name(),
            self.machine.cpus,
            self.load.name()
        )
    }
}

/// The guest's loop. Arguments: the load (`preempt` or `livepatch`), the time limit in
/// seconds, the step limit (0: none), and for `livepatch` the module's path. Prints
/// `progress STEPS SECONDS` every 10 s and `done STEPS SECONDS` at the end; exits 1 when a
/// step fails (a write refused, a transition that does not finish).
const GUEST_SCRIPT: &str = r#"set -u
load=$1 seconds=$2 limit=$3 module=${4:-}
preempt=/sys/kernel/debug/sched/preempt
echo "kernel: $(uname -r)"
echo "online CPUs: $(cat /sys/devices/system/cpu/online)"
if [ ! -w "$preempt" ]; then
    echo "no $preempt: the kernel lacks PREEMPT_DYNAMIC or SCHED_DEBUG"
    exit 2
fi
echo "preempt modes: $(cat "$preempt")"
# Every CPU busy with what calls cond_resched() most: fork, exec and exit (page-table
# teardown), seq_file reads of /proc, sysfs directory walks.
busy() {
    while :; do
        cat /proc/meminfo /proc/self/maps /proc/self/status /proc/kallsyms > /dev/null
        ls -R /sys/devices > /dev/null 2>&1
    done
}
cpus=$(grep -c '^processor' /proc/cpuinfo)
pids=
i=0
while [ "$i" -lt "$cpus" ]; do
    busy &
    pids="$pids $!"
    i=$((i + 1))
done
n=0
wait_for() {
    tries=600
    until "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}
sysfs=/sys/kernel/livepatch/livepatch_int3
transition_done() { [ "$(cat "$sysfs/transition")" = 0 ]; }
patch_gone() { [ ! -e "$sysfs" ]; }
# One mode switch a step: full, none, voluntary, full... From the boot mode (voluntary on
# Debian's kernel) the first switch rewrites the most sites.
step_preempt() {
    case $((n % 3)) in 0) mode=full ;; 1) mode=none ;; *) mode=voluntary ;; esac
    echo "$mode" > "$preempt" || { echo "writing $mode to $preempt failed"; return 1; }
    n=$((n + 1))
}
step_livepatch() {
    insmod "$module" || return 1
    wait_for transition_done || { echo "the enable transition did not finish"; return 1; }
    n=$((n + 1))
    echo 0 > "$sysfs/enabled"
    wait_for patch_gone || { echo "the disable transition did not finish"; return 1; }
    n=$((n + 1))
    rmmod livepatch_int3 || return 1
}
start=$(date +%s)
last=$start
status=0
while :; do
    if ! "step_$load"; then
        status=1
        break
    fi
    now=$(date +%s)
    if [ $((now - last)) -ge 10 ] || [ "$n" -le 3 ]; then
        echo "progress $n $((now - start))"
        last=$now
    fi
    [ $((now - start)) -ge "$seconds" ] && break
    [ "$limit" -gt 0 ] && [ "$n" -ge "$limit" ] && break
done
kill $pids 2>/dev/null
echo "done $n $(($(date +%s) - start))"
exit $status
"#;

/// What the kernel console of one boot shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsoleCounts {
    /// `Oops: int3` lines.
    pub int3: u64,
    /// Other `Oops:` lines, `BUG:` and `WARNING:` lines.
    pub other: u64,
    /// The code of the first int3 oops, from its `RIP:` line (`force_qs_rnp+0x...`).
    pub first_int3_site: Option<String>,
    /// The first other oops, BUG or warning line.
    pub first_other: Option<String>,
}

/// Counts the oopses of a kernel console log.
pub fn count_console(text: &str) -> ConsoleCounts {
    let mut counts = ConsoleCounts::default();
    let mut want_rip = false;
    for line in text.lines() {
        // Console lines start with `[    1.234567] `; take the message after the stamp.
        let message = line
            .split_once("] ")
            .filter(|(stamp, _)| stamp.trim_start().starts_with('['))
            .map_or(line, |(_, rest)| rest)
            .trim();
        if message.starts_with("Oops: int3") {
            counts.int3 += 1;
            want_rip = counts.first_int3_site.is_none();
        } else if message.starts_with("Oops:")
            || message.starts_with("BUG:")
            || message.starts_with("WARNING:")
        {
            counts.other += 1;
            if counts.first_other.is_none() {
                counts.first_other = Some(message.to_string());
            }
        } else if want_rip {
            if let Some(rip) = message.strip_prefix("RIP: ") {
                let site = rip.split_once(':').map_or(rip, |(_, site)| site);
                counts.first_int3_site = Some(site.trim().to_string());
                want_rip = false;
            }
        }
    }
    counts
}

/// The last `progress` or `done` line of the guest's output: steps and seconds.
fn last_progress(output: &str) -> Option<(u64, u64)> {
    output.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["progress" | "done", steps, seconds] => {
                Some((steps.parse().ok()?, seconds.parse().ok()?))
            }
            _ => None,
        }
    })
}

/// One boot's result.
#[derive(Debug, Clone)]
pub struct Observation {
    pub steps: u64,
    pub seconds: u64,
    pub counts: ConsoleCounts,
    pub ending: Ending,
    pub output: String,
    pub console_logs: Vec<PathBuf>,
}

impl Observation {
    /// The run counts as clean: the loop finished, and the console has no oops, BUG or warning.
    pub fn clean(&self) -> bool {
        self.ending == Ending::Exited(0) && self.counts.int3 == 0 && self.counts.other == 0
    }
}

/// Boots the kernel once and runs the loop.
fn observe_once(
    sh: &Shell,
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    options: &Options,
    work: &Path,
) -> Result<Observation> {
    let module_arg = match options.load {
        Load::Preempt => String::new(),
        Load::Livepatch => format!(" /int3/livepatch-{MODULE_NAME}.ko"),
    };
    let job = Job {
        name: format!("int3-{}", options.load.name()),
        cwd: "/int3".to_string(),
        command: format!(
            "sh ./loop.sh {} {} {}{module_arg}",
            options.load.name(),
            options.seconds,
            options.switches
        ),
        // Time for the last step to finish: under one TCG thread with busy vCPUs a mode
        // switch can take a minute.
        timeout: Duration::from_secs(options.seconds + 240),
    };
    if work.exists() {
        std::fs::remove_dir_all(work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    let outcomes = run_jobs_on(sh, kernel, rootfs, &[job], work, &options.machine)?;
    let outcome = outcomes
        .into_iter()
        .next()
        .context("the guest reported no result")?;
    let mut console_logs: Vec<PathBuf> = std::fs::read_dir(work)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("console-") && name.ends_with(".log"))
        })
        .filter(|path| !path.to_string_lossy().ends_with(".qemu.log"))
        .collect();
    console_logs.sort();
    let mut text = String::new();
    for log in &console_logs {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(log)?).replace('\r', ""));
    }
    let (steps, seconds) = last_progress(&outcome.output).unwrap_or((0, 0));
    Ok(Observation {
        steps,
        seconds,
        counts: count_console(&text),
        ending: outcome.ending,
        output: outcome.output,
        console_logs,
    })
}

/// The kernel, the guest tree (with the livepatch for `--load livepatch`), ready to boot.
fn prepare(sh: &Shell, options: &Options, work: &Path) -> Result<(KernelDirs, Rootfs)> {
    let root = crate::project_root();
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let (kernel, distro) = match options.kernel {
        Kernel::Stock => {
            let mut spec = KernelSpec::stock();
            spec.fragments.push(root.join(PREEMPT_DYNAMIC_FRAGMENT));
            (ensure_kernel(sh, &spec)?, None)
        }
        Kernel::Debian => {
            let distro = crate::distro::ensure_distro(sh)?;
            (distro.kernel(), Some(distro))
        }
    };
    let rootfs = Rootfs::new(sh, &work.join("rootfs"))?;
    let script = rootfs.path(Path::new("/int3/loop.sh"));
    if let Some(parent) = script.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&script, GUEST_SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    if options.load == Load::Livepatch {
        let kpatch = crate::kpatch::build_kpatch_rs(sh)?;
        let out = work.join("module");
        let mut command = match &distro {
            None => {
                let mut command =
                    crate::kpatch::kpatch_build_command(&kpatch, &kernel, MODULE_NAME, &out)?;
                command.arg(root.join(STOCK_PATCH));
                command
            }
            Some(distro) => {
                if out.exists() {
                    std::fs::remove_dir_all(&out)?;
                }
                let mut command = std::process::Command::new(&kpatch);
                command
                    .arg("build")
                    .arg("--sourcedir")
                    .arg(&distro.source)
                    .arg("--config")
                    .arg(&distro.config)
                    .arg("--system-map")
                    .arg(&distro.system_map)
                    .arg("--symvers")
                    .arg(&distro.symvers)
                    .arg("--cache-dir")
                    .arg(distro.cache.join("build-int3"))
                    .args(["-j2", "--name", MODULE_NAME, "--output"])
                    .arg(&out)
                    .arg(root.join(DEBIAN_PATCH));
                command
            }
        };
        eprintln!("int3-repro: building the livepatch ({:?})", command);
        let status = command
            .status()
            .context("cannot run kpatch-rs build for the livepatch")?;
        if !status.success() {
            bail!("kpatch-rs build of the livepatch failed ({status})");
        }
        rootfs.copy_file(
            &out.join(format!("livepatch-{MODULE_NAME}.ko")),
            Path::new(&format!("/int3/livepatch-{MODULE_NAME}.ko")),
        )?;
    }
    Ok((kernel, rootfs))
}

/// Boots `options.boots` times; each boot's result.
pub fn observe(sh: &Shell, options: &Options, work: &Path) -> Result<Vec<Observation>> {
    let (kernel, rootfs) = prepare(sh, options, work)?;
    let mut observations = Vec::new();
    for boot in 1..=options.boots {
        let started = Instant::now();
        let observation = observe_once(
            sh,
            &kernel,
            &rootfs,
            options,
            &work.join(format!("boot-{boot}")),
        )?;
        println!(
            "int3-repro boot {boot}/{} ({}): {} {} in {} s (guest clock; {} s wall), {} \
             int3 oopses{}, {} other oopses/BUGs/warnings{}, {:?}",
            options.boots,
            options.describe(),
            observation.steps,
            options.load.unit(),
            observation.seconds,
            started.elapsed().as_secs(),
            observation.counts.int3,
            observation
                .counts
                .first_int3_site
                .as_ref()
                .map_or(String::new(), |site| format!(" (first at {site})")),
            observation.counts.other,
            observation
                .counts
                .first_other
                .as_ref()
                .map_or(String::new(), |line| format!(" (first: {line})")),
            observation.ending,
        );
        if !observation.clean() {
            for line in observation.output.lines().take(20) {
                println!("    {line}");
            }
            for log in &observation.console_logs {
                println!("    console log: {}", log.display());
            }
        }
        observations.push(observation);
    }
    Ok(observations)
}

/// One line over all boots.
fn summary(options: &Options, observations: &[Observation]) -> String {
    let steps: u64 = observations.iter().map(|o| o.steps).sum();
    let seconds: u64 = observations.iter().map(|o| o.seconds).sum();
    let int3: u64 = observations.iter().map(|o| o.counts.int3).sum();
    let other: u64 = observations.iter().map(|o| o.counts.other).sum();
    let lost = observations
        .iter()
        .filter(|o| o.ending != Ending::Exited(0))
        .count();
    format!(
        "{}: {} boots, {steps} {} in {seconds} s, {int3} int3 oopses, {other} other \
         oopses/BUGs/warnings, {lost} boots not finished cleanly",
        options.describe(),
        observations.len(),
        options.load.unit(),
    )
}

pub fn run(args: &[String]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    if args == ["--ci"] {
        return ci_check(&sh);
    }
    let options = Options::parse(args)?;
    let work = crate::project_root().join(format!(
        "target/int3-repro/{}-{}-{}cpu-{}",
        options.kernel.name(),
        options.machine.tcg.name(),
        options.machine.cpus,
        options.load.name()
    ));
    let observations = observe(&sh, &options, &work)?;
    let line = summary(&options, &observations);
    if observations.iter().all(Observation::clean) {
        println!("PASS  int3-repro {line}");
        Ok(())
    } else {
        println!("FAIL  int3-repro {line}");
        bail!(
            "the kernel oopsed or a boot did not finish; logs under {}",
            work.display()
        )
    }
}

/// The CI check: the configuration the project's guests run on (Debian's kernel, one TCG
/// thread, two vCPUs, both online) makes preempt mode switches under load for
/// [`CI_SECONDS`] without an oops. Prints one PASS/FAIL line.
pub fn ci_check(sh: &Shell) -> Result<()> {
    let options = Options {
        kernel: Kernel::Debian,
        machine: Machine {
            panic_on_oops: false,
            ..Machine::DEFAULT
        },
        load: Load::Preempt,
        seconds: CI_SECONDS,
        switches: CI_SWITCHES,
        boots: 1,
    };
    let work = crate::project_root().join("target/int3-repro/ci");
    let observations = observe(sh, &options, &work)?;
    let line = summary(&options, &observations);
    let enough = observations.iter().all(|o| o.steps >= CI_MIN_SWITCHES);
    if observations.iter().all(Observation::clean) && enough {
        println!("PASS  int3-repro {line}");
        Ok(())
    } else {
        println!("FAIL  int3-repro {line}");
        bail!("int3-repro: logs under {}", work.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_int3_oopses_and_names_the_first_site() {
        let console = "[   12.000000] Dynamic Preempt: full\n\
            [   12.500000] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
            [   12.500001] CPU: 1 UID: 0 PID: 15 Comm: rcu_preempt Not tainted 6.12.117\n\
            [   12.500002] RIP: 0010:force_qs_rnp+0x1b/0x2a0\n\
            [   12.600000] RIP: 0010:somewhere_else+0x1/0x2\n\
            [   13.000000] Oops: int3: 0000 [#2] PREEMPT SMP NOPTI\n\
            [   13.000002] RIP: 0010:do_exit+0x10/0x900\n";
        let counts = count_console(console);
        assert_eq!(counts.int3, 2);
        assert_eq!(counts.other, 0);
        assert_eq!(
            counts.first_int3_site.as_deref(),
            Some("force_qs_rnp+0x1b/0x2a0")
        );
    }

    #[test]
    fn counts_other_oopses_bugs_and_warnings_apart() {
        let console = "[    1.0] BUG: kernel NULL pointer dereference, address: 0\n\
            [    2.0] Oops: general protection fault, probably for non-canonical address\n\
            [    3.0] WARNING: CPU: 0 PID: 1 at kernel/x.c:1 f+0x0/0x1\n\
            [    4.0] RIP: 0010:f+0x0/0x1\n\
            the text WARNING: inside a line is not a kernel warning\n";
        let counts = count_console(console);
        assert_eq!(counts.int3, 0);
        assert_eq!(counts.other, 3);
        assert_eq!(counts.first_int3_site, None);
        assert_eq!(
            counts.first_other.as_deref(),
            Some("BUG: kernel NULL pointer dereference, address: 0")
        );
        assert_eq!(count_console(""), ConsoleCounts::default());
    }

    #[test]
    fn reads_the_last_progress_line() {
        let output = "kernel: 6.12\nprogress 30 10\nprogress 66 20\nsome noise\n";
        assert_eq!(last_progress(output), Some((66, 20)));
        assert_eq!(
            last_progress("progress 66 20\ndone 70 21\n"),
            Some((70, 21))
        );
        assert_eq!(last_progress("progress x 1\n"), None);
        assert_eq!(last_progress(""), None);
    }

    #[test]
    fn parses_the_command_line() {
        let args: Vec<String> = ["--kernel", "stock", "--tcg", "multi", "--cpus", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let options = Options::parse(&args).ok();
        let options = options.as_ref();
        assert_eq!(options.map(|o| o.kernel), Some(Kernel::Stock));
        assert_eq!(options.map(|o| o.machine.tcg), Some(TcgThreads::Multi));
        assert_eq!(options.map(|o| o.machine.cpus), Some(4));
        assert_eq!(options.map(|o| o.machine.panic_on_oops), Some(false));
        for bad in [
            &["--kernel", "fedora"][..],
            &["--tcg", "double"],
            &["--cpus", "0"],
            &["--seconds"],
            &["--seconds", "ten"],
            &["--bogus"],
        ] {
            let args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(Options::parse(&args).is_err(), "{bad:?} must be refused");
        }
    }
}
