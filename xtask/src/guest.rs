//! Running jobs inside a QEMU guest: the initramfs (busybox plus the host tools the upstream
//! selftests need, with their shared libraries), one boot per group of jobs, and the results
//! read back from a second serial port.
//!
//! The guest's `/init` runs each job in turn under `timeout`, writing `KPATCH-BEGIN`, the
//! job's output and `KPATCH-END <rc>` to `/dev/ttyS1`, a serial port that carries nothing else
//! (the kernel console is `ttyS0`, kept in a separate log), and reboots when done; with
//! `-no-reboot` that ends QEMU. A guest that panics or hangs is cut off (`panic=-1`, and the
//! harness kills QEMU after a deadline): the job that was running is failed with the console
//! log saved, and the guest is booted again for the jobs after it. A job that leaves the
//! kernel unfit for the next one creates `/tmp/kpatch-reboot`: its result stands, and the
//! guest is booted again for the jobs after it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::kernel::KernelDirs;

/// Host programs copied into the guest over busybox's applets of the same name, because the
/// selftests use options busybox lacks (`date --rfc-3339`, `stat --format`, `sysctl
/// --values`) or call them by absolute path (`/bin/stat`).
const HOST_PROGRAMS: &[&str] = &[
    "bash", "cat", "date", "stat", "sleep", "seq", "tr", "timeout", "id", "getconf", "sysctl",
    "grep", "sed", "awk", "diff", "dmesg", "head", "tail", "wc", "sort", "cut", "mktemp", "ls",
    "rm", "mkdir", "env", "basename", "dirname", "readlink", "kill",
    // Linux 6.1's selftests compare the kernel log with `comm`, which busybox lacks.
    "comm",
];

/// kmod is one program that acts by the name it is called with.
const KMOD_NAMES: &[&str] = &["insmod", "rmmod", "modinfo", "modprobe", "lsmod", "depmod"];

/// One command run in the guest: `command` is a shell line run in `cwd`.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub cwd: String,
    pub command: String,
    pub timeout: Duration,
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The job's command exited with this code.
    Exited(i32),
    /// The job ran past its time limit and was stopped.
    TimedOut,
    /// The guest died or hung while the job ran (why, as far as the console log tells); the
    /// console log is in the outcome.
    GuestLost(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub ending: Ending,
    /// The job's stdout and stderr, as the guest wrote them.
    pub output: String,
    /// How long the job ran, in whole seconds, as the guest measured it.
    pub seconds: Option<u64>,
    /// Set when the guest was lost: where its kernel console log was saved.
    pub console_log: Option<PathBuf>,
}

/// A guest root filesystem being assembled on the host.
#[derive(Debug)]
pub struct Rootfs {
    pub dir: PathBuf,
}

impl Rootfs {
    /// A fresh tree in `dir` with busybox, the host programs and their libraries.
    pub fn new(sh: &Shell, dir: &Path) -> Result<Rootfs> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        for sub in [
            "bin", "lib", "lib64", "etc", "proc", "sys", "dev", "tmp", "usr", "root",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        // Scripts name programs by any of the usual paths; all of them lead to /bin.
        for link in ["sbin", "usr/bin", "usr/sbin"] {
            let target = if link == "sbin" { "bin" } else { "../bin" };
            symlink(target, &dir.join(link))?;
        }
        let rootfs = Rootfs {
            dir: dir.to_path_buf(),
        };
        rootfs.install_busybox(sh)?;
        let mut libraries = Vec::new();
        for name in HOST_PROGRAMS {
            let program = find_program(name)?;
            rootfs.copy_program(&program, name)?;
            libraries.extend(shared_libraries(sh, &program)?);
        }
        let kmod = find_program("kmod")?;
        rootfs.copy_program(&kmod, "kmod")?;
        libraries.extend(shared_libraries(sh, &kmod)?);
        for name in KMOD_NAMES {
            let link = dir.join("bin").join(name);
            let _ = std::fs::remove_file(&link);
            symlink("kmod", &link)?;
        }
        libraries.sort();
        libraries.dedup();
        for library in &libraries {
            rootfs.copy_file(library, library)?;
        }
        Ok(rootfs)
    }

    fn install_busybox(&self, sh: &Shell) -> Result<()> {
        let busybox = find_program("busybox")?;
        let listing = cmd!(sh, "{busybox} --list")
            .read()
            .context("cannot list busybox applets")?;
        self.copy_program(&busybox, "busybox")?;
        for applet in listing.lines().map(str::trim).filter(|a| !a.is_empty()) {
            if applet == "busybox" || applet.contains('/') {
                continue;
            }
            symlink("busybox", &self.dir.join("bin").join(applet))?;
        }
        Ok(())
    }

    /// Copies a host program to /bin/<name> with the shared libraries it loads (none for a
    /// script, whose interpreter the guest must already have).
    pub fn add_program(&self, sh: &Shell, program: &Path, name: &str) -> Result<()> {
        self.copy_program(program, name)?;
        make_executable(&self.dir.join("bin").join(name))?;
        let start =
            std::fs::read(program).with_context(|| format!("cannot read {}", program.display()))?;
        if start.starts_with(b"#!") {
            return Ok(());
        }
        for library in shared_libraries(sh, program)? {
            if !self.path(&library).exists() {
                self.copy_file(&library, &library)?;
            }
        }
        Ok(())
    }

    /// Copies a host program to /bin/<name>, replacing a busybox applet link of that name.
    fn copy_program(&self, program: &Path, name: &str) -> Result<()> {
        let target = self.dir.join("bin").join(name);
        if target.symlink_metadata().is_ok() {
            std::fs::remove_file(&target)
                .with_context(|| format!("cannot replace {}", target.display()))?;
        }
        std::fs::copy(program, &target)
            .with_context(|| format!("cannot copy {} into the guest", program.display()))?;
        Ok(())
    }

    /// Copies a host file to `guest_path` (absolute, inside the guest), following symlinks.
    pub fn copy_file(&self, host: &Path, guest_path: &Path) -> Result<()> {
        let target = self.path(guest_path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(host, &target)
            .with_context(|| format!("cannot copy {} to {}", host.display(), target.display()))?;
        Ok(())
    }

    /// Where the guest's absolute `guest_path` lies on the host.
    pub fn path(&self, guest_path: &Path) -> PathBuf {
        let relative = guest_path.strip_prefix("/").unwrap_or(guest_path);
        self.dir.join(relative)
    }

    /// Writes the init script for `jobs` and packs the tree as an uncompressed newc cpio
    /// archive (the kernel unpacks it faster than a compressed one, and it is rebuilt each run).
    fn pack(&self, sh: &Shell, jobs: &[Job], archive: &Path) -> Result<()> {
        let list = job_list(jobs)?;
        std::fs::write(self.dir.join("jobs"), list).context("cannot write the guest job list")?;
        let init = self.dir.join("init");
        std::fs::write(&init, INIT_SCRIPT).context("cannot write the guest init")?;
        make_executable(&init)?;
        let dir = &self.dir;
        let archive_arg = archive.to_path_buf();
        cmd!(
            sh,
            "sh -c 'cd \"$1\" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet > \"$2\"' pack {dir} {archive_arg}"
        )
        .quiet()
        .run()
        .context("cannot pack the initramfs with cpio")?;
        Ok(())
    }
}

/// The guest's `/init`. Reads the job list (name, timeout, cwd, command, tab-separated), skips
/// the jobs before `kpatch.first=N` from the kernel command line (set when a previous boot was
/// lost), and reports on fd 3, the second serial port.
const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin
export HOME=/root
# The selftests only check that KDIR names a directory; the modules are already built.
export KDIR=/lib/modules/build
mkdir -p "$KDIR"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# bash's process substitution (`diff <(...) <(...)`, Linux 6.1's selftests) needs /dev/fd.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
exec 3>/dev/ttyS1
first=0
for arg in $(cat /proc/cmdline); do
	case "$arg" in kpatch.first=*) first="${arg#kpatch.first=}" ;; esac
done
index=0
tab=$(printf '\t')
while IFS="$tab" read -r name limit cwd command; do
	if [ "$index" -ge "$first" ]; then
		echo "KPATCH-BEGIN $index $name" >&3
		start=$(date +%s)
		# Each job runs in its own session, so that at its time limit the whole process
		# group (the script and whatever it started) is stopped, TERM first, then KILL.
		(cd "$cwd" && exec setsid sh -c "$command") </dev/null >&3 2>&1 &
		job=$!
		(
			sleep "$limit"
			touch "/tmp/timed-out.$index"
			kill -TERM -"$job" 2>/dev/null
			sleep 10
			kill -KILL -"$job" 2>/dev/null
		) </dev/null >/dev/null 2>&1 &
		watcher=$!
		wait "$job"
		rc=$?
		kill "$watcher" 2>/dev/null
		[ -e "/tmp/timed-out.$index" ] && rc=timeout
		echo "" >&3
		echo "KPATCH-END $index $name $rc $(($(date +%s) - start))" >&3
		# A job that left the kernel in a state the next job must not inherit (a livepatch
		# that could not be removed) asks for a fresh boot: the harness boots again for the
		# jobs after it.
		if [ -e /tmp/kpatch-reboot ]; then
			sync
			reboot -f
		fi
	fi
	index=$((index + 1))
done < /jobs
echo "KPATCH-DONE" >&3
sync
reboot -f
"#;

/// The job list the init script reads: one tab-separated line per job.
fn job_list(jobs: &[Job]) -> Result<String> {
    let mut list = String::new();
    for job in jobs {
        for (what, value) in [
            ("name", &job.name),
            ("cwd", &job.cwd),
            ("command", &job.command),
        ] {
            if value.contains(['\t', '\n']) || value.is_empty() {
                bail!(
                    "cannot run job {:?} in the guest: its {what} is empty or has a tab or newline",
                    job.name
                );
            }
        }
        if job.name.contains(' ') {
            bail!(
                "cannot run job {:?} in the guest: its name has a space",
                job.name
            );
        }
        let _ = writeln!(
            list,
            "{}\t{}\t{}\t{}",
            job.name,
            job.timeout.as_secs().max(1),
            job.cwd,
            job.command
        );
    }
    Ok(list)
}

/// How QEMU's TCG runs the vCPUs: all on one host thread, in turn, or one host thread each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcgThreads {
    Single,
    Multi,
}

impl TcgThreads {
    pub fn parse(text: &str) -> Result<TcgThreads> {
        match text {
            "single" => Ok(TcgThreads::Single),
            "multi" => Ok(TcgThreads::Multi),
            other => bail!("unknown TCG threading `{other}` (expected single or multi)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TcgThreads::Single => "single",
            TcgThreads::Multi => "multi",
        }
    }
}

/// The emulated machine a guest boots on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub tcg: TcgThreads,
    /// vCPUs, one per socket (see [`boot_guest`]).
    pub cpus: u32,
    /// `oops=panic`: the first oops ends the guest, so that a job cannot pass on a kernel
    /// that oopsed. Off only for a job that counts oopses itself.
    pub panic_on_oops: bool,
}

impl Machine {
    /// What every check of the project runs on: two vCPUs on one TCG thread. With a thread
    /// per vCPU, a vCPU can run a stale translation of code another vCPU has just rewritten
    /// (`text_poke_bp` of a static call, ftrace) and die on an int3 the kernel already removed:
    /// `cargo xtask int3-repro --tcg multi` shows it without any livepatch.
    pub const DEFAULT: Machine = Machine {
        tcg: TcgThreads::Single,
        cpus: 2,
        panic_on_oops: true,
    };

    /// QEMU's `-accel` and `-smp` arguments.
    fn qemu_args(&self) -> [String; 4] {
        [
            "-accel".to_string(),
            format!("tcg,thread={}", self.tcg.name()),
            "-smp".to_string(),
            format!("{0},sockets={0},cores=1", self.cpus.max(1)),
        ]
    }
}

/// Boots `kernel` with `rootfs` as often as needed to run every job once, and returns one
/// outcome per job, in order. `work` receives the initramfs and the logs.
pub fn run_jobs(
    sh: &Shell,
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    jobs: &[Job],
    work: &Path,
) -> Result<Vec<Outcome>> {
    run_jobs_on(sh, kernel, rootfs, jobs, work, &Machine::DEFAULT)
}

/// [`run_jobs`] on the given machine.
pub fn run_jobs_on(
    sh: &Shell,
    kernel: &KernelDirs,
    rootfs: &Rootfs,
    jobs: &[Job],
    work: &Path,
    machine: &Machine,
) -> Result<Vec<Outcome>> {
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let initramfs = work.join("initramfs.cpio");
    rootfs.pack(sh, jobs, &initramfs)?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut boot = 0;
    while outcomes.len() < jobs.len() {
        boot += 1;
        let first = outcomes.len();
        let console = work.join(format!("console-{boot}.log"));
        let results = work.join(format!("results-{boot}.log"));
        let finished = boot_guest(kernel, &initramfs, first, &console, &results, jobs, machine)?;
        let text =
            String::from_utf8_lossy(&std::fs::read(&results).unwrap_or_default()).replace('\r', "");
        let run = parse_results(&text);
        for reported in run.jobs {
            if reported.index != outcomes.len() {
                // Only the jobs of this boot, in order, count; anything else means the result
                // channel is garbled, and trusting it could report a pass that did not happen.
                bail!(
                    "cannot read guest results in {}: expected job {}, found job {}",
                    results.display(),
                    outcomes.len(),
                    reported.index
                );
            }
            let lost = reported.ending.is_none();
            let ending = reported
                .ending
                .unwrap_or_else(|| Ending::GuestLost(lost_reason(&console, finished)));
            let console_log = lost.then(|| console.clone());
            outcomes.push(Outcome {
                name: jobs[reported.index].name.clone(),
                ending,
                output: reported.output,
                seconds: reported.seconds,
                console_log,
            });
        }
        if run.done && outcomes.len() < jobs.len() {
            bail!(
                "the guest finished without running every job; see {}",
                results.display()
            );
        }
        if !run.done && outcomes.len() == first {
            // The guest died before starting a job (a boot failure): every remaining job is
            // lost, rather than booting again into the same failure.
            let why = lost_reason(&console, finished);
            for job in &jobs[first..] {
                outcomes.push(Outcome {
                    name: job.name.clone(),
                    ending: Ending::GuestLost(format!("{why}, before this job started")),
                    output: String::new(),
                    seconds: None,
                    console_log: Some(console.clone()),
                });
            }
        }
    }
    Ok(outcomes)
}

/// Why a guest ended early, from its console log: a panic names itself there; a guest killed
/// at the deadline hung.
fn lost_reason(console: &Path, finished: bool) -> String {
    let text = std::fs::read(console).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    describe_loss(&text, finished)
}

fn describe_loss(console_text: &str, finished: bool) -> String {
    if let Some(line) = console_text
        .lines()
        .find(|l| l.contains("Kernel panic - not syncing"))
    {
        let message = line
            .split("Kernel panic - not syncing")
            .nth(1)
            .unwrap_or_default();
        return format!("the kernel panicked{}", message.trim_end());
    }
    if finished {
        "the guest stopped without reporting a result".to_string()
    } else {
        "the guest hung and was killed at the deadline".to_string()
    }
}

/// How long the guest may stay silent between jobs: booting (about 3 s under emulation) and
/// moving from one job to the next take far less.
const BETWEEN_JOBS: Duration = Duration::from_secs(120);

/// How long a job may run before the guest counts as hung: its own limit, plus the 10 s the
/// init script grants between TERM and KILL, plus slack for a loaded host.
fn job_deadline(job: &Job) -> Duration {
    job.timeout + Duration::from_secs(10) + Duration::from_secs(30)
}

/// Runs QEMU once, from job `first` on; returns false when it had to be killed because the
/// guest hung (a job ran past [`job_deadline`], or nothing happened for [`BETWEEN_JOBS`]).
/// Prints each job's result as the guest reports it.
fn boot_guest(
    kernel: &KernelDirs,
    initramfs: &Path,
    first: usize,
    console: &Path,
    results: &Path,
    jobs: &[Job],
    machine: &Machine,
) -> Result<bool> {
    for log in [console, results] {
        std::fs::write(log, "").with_context(|| format!("cannot create {}", log.display()))?;
    }
    let qemu_log = console.with_extension("qemu.log");
    let oops = if machine.panic_on_oops {
        " oops=panic"
    } else {
        ""
    };
    let append = format!("console=ttyS0 loglevel=5 panic=-1{oops} kpatch.first={first}");
    let mut qemu = Command::new("qemu-system-x86_64");
    // One CPU per socket: without ACPI the kernel learns CPUs from SeaBIOS's MP table, which
    // lists only the first core of a socket, so plain `-smp 2` boots on one CPU.
    qemu.args(machine.qemu_args());
    qemu.args(["-m", "1G", "-nodefaults", "-display", "none"])
        .args(["-no-reboot", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(&kernel.bzimage)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(append);
    let qemu_out = std::fs::File::create(&qemu_log)
        .with_context(|| format!("cannot create {}", qemu_log.display()))?;
    let qemu_err = qemu_out.try_clone()?;
    let mut child = qemu
        .stdout(qemu_out)
        .stderr(qemu_err)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("cannot start qemu-system-x86_64; run `cargo xtask deps`")?;
    let mut shown = 0;
    let mut begun = 0;
    let mut last_event = Instant::now();
    loop {
        let status = child.try_wait().context("cannot wait for QEMU")?;
        let text =
            String::from_utf8_lossy(&std::fs::read(results).unwrap_or_default()).replace('\r', "");
        let begins = text
            .lines()
            .filter(|l| l.starts_with("KPATCH-BEGIN "))
            .count();
        let ends = text
            .lines()
            .filter(|l| l.starts_with("KPATCH-END "))
            .count();
        if begins != begun || ends != shown {
            last_event = Instant::now();
            begun = begins;
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("KPATCH-END "))
            .skip(shown)
        {
            shown += 1;
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, _, name, rc, seconds] = fields.as_slice() {
                let how = match *rc {
                    "timeout" => "timed out".to_string(),
                    code => format!("exited {code}"),
                };
                eprintln!("  guest: {name} {how} after {seconds}s");
            }
        }
        if let Some(status) = status {
            if !status.success() {
                let qemu_text = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                bail!("qemu-system-x86_64 failed ({status}): {}", qemu_text.trim());
            }
            return Ok(true);
        }
        let running = (begun > shown).then(|| jobs.get(first + shown)).flatten();
        let allowed = running.map_or(BETWEEN_JOBS, job_deadline);
        if last_event.elapsed() > allowed {
            let _ = child.kill();
            let _ = child.wait();
            let what = running.map_or("between jobs".to_string(), |j| format!("in job {}", j.name));
            eprintln!(
                "  guest: no progress for {}s {what}; QEMU killed, console log: {}",
                allowed.as_secs(),
                console.display()
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The jobs one boot reported, and whether the guest reached the end of its list.
#[derive(Debug, Default, PartialEq, Eq)]
struct Run {
    jobs: Vec<Reported>,
    done: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Reported {
    index: usize,
    /// None when the job began but never ended.
    ending: Option<Ending>,
    seconds: Option<u64>,
    output: String,
}

/// Reads the result channel: `KPATCH-BEGIN i name`, output lines, `KPATCH-END i name rc
/// seconds` (rc is `timeout` when the job was stopped at its time limit), and
/// finally `KPATCH-DONE`. The init script adds one empty line before each END marker (so
/// that output without a final newline cannot swallow the marker); it is removed here.
fn parse_results(text: &str) -> Run {
    let mut run = Run::default();
    let mut current: Option<Reported> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["KPATCH-BEGIN", index, _name] => {
                if let Some(unfinished) = current.take() {
                    run.jobs.push(unfinished);
                }
                if let Ok(index) = index.parse() {
                    current = Some(Reported {
                        index,
                        ending: None,
                        seconds: None,
                        output: String::new(),
                    });
                }
            }
            ["KPATCH-END", index, _name, rc, seconds] => {
                if let Some(mut job) = current.take() {
                    if index.parse() == Ok(job.index) {
                        job.ending = match *rc {
                            "timeout" => Some(Ending::TimedOut),
                            code => code.parse().ok().map(Ending::Exited),
                        };
                        job.seconds = seconds.parse().ok();
                        if job.output.ends_with("\n\n") || job.output == "\n" {
                            job.output.pop();
                        }
                    }
                    run.jobs.push(job);
                }
            }
            ["KPATCH-DONE"] => run.done = true,
            _ => {
                if let Some(job) = current.as_mut() {
                    job.output.push_str(line);
                    job.output.push('\n');
                }
            }
        }
    }
    if let Some(unfinished) = current {
        run.jobs.push(unfinished);
    }
    run
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot create symlink {} -> {target}", link.display()))
}

pub fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// The host program `name`, searched in PATH and the system directories.
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').chain([
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]);
    for dir in dirs.filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot find the program `{name}` for the guest; run `cargo xtask deps`")
}

/// The shared libraries `program` loads, by absolute path, from `ldd`.
fn shared_libraries(sh: &Shell, program: &Path) -> Result<Vec<PathBuf>> {
    let output = cmd!(sh, "ldd {program}")
        .ignore_status()
        .read()
        .with_context(|| format!("cannot run ldd on {}", program.display()))?;
    parse_ldd(&output)
        .with_context(|| format!("cannot list the libraries of {}", program.display()))
}

fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("library {} not found", name.trim());
                }
                rest.split(" (").next().unwrap_or_default().trim()
            }
            None => line.split(" (").next().unwrap_or_default().trim(),
        };
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(usize, Option<Ending>, &str)], done: bool) {
        let run = parse_results(text);
        let got: Vec<(usize, Option<Ending>, &str)> = run
            .jobs
            .iter()
            .map(|j| (j.index, j.ending.clone(), j.output.as_str()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(run.done, done);
    }

    #[test]
    fn parses_finished_jobs() {
        check(
            "KPATCH-BEGIN 0 a\nhello\n\nKPATCH-END 0 a 0 3\nKPATCH-BEGIN 1 b\n\nKPATCH-END 1 b 4 0\nKPATCH-DONE\n",
            &[(0, Some(Ending::Exited(0)), "hello\n"), (1, Some(Ending::Exited(4)), "")],
            true,
        );
    }

    #[test]
    fn parses_a_job_stopped_at_its_time_limit() {
        check(
            "KPATCH-BEGIN 2 a\nsleeping\n\nKPATCH-END 2 a timeout 600\n",
            &[(2, Some(Ending::TimedOut), "sleeping\n")],
            false,
        );
    }

    #[test]
    fn output_without_final_newline_keeps_its_text() {
        check(
            "KPATCH-BEGIN 3 a\nTEST: x ... \nKPATCH-END 3 a 1 0\n",
            &[(3, Some(Ending::Exited(1)), "TEST: x ... \n")],
            false,
        );
    }

    #[test]
    fn job_cut_off_by_a_lost_guest_has_no_ending() {
        check(
            "KPATCH-BEGIN 0 a\n\nKPATCH-END 0 a 0 1\nKPATCH-BEGIN 1 b\npartial\n",
            &[(0, Some(Ending::Exited(0)), ""), (1, None, "partial\n")],
            false,
        );
    }

    #[test]
    fn end_marker_of_another_job_does_not_finish_the_current_one() {
        check(
            "KPATCH-BEGIN 0 a\nKPATCH-END 1 b 0 1\n",
            &[(0, None, "")],
            false,
        );
    }

    #[test]
    fn garbled_end_marker_is_not_a_result() {
        check(
            "KPATCH-BEGIN 0 a\nKPATCH-END 0 a zero 1\n",
            &[(0, None, "")],
            false,
        );
    }

    #[test]
    fn nothing_reported_is_an_empty_run() {
        check("", &[], false);
        check("garbage before any job\n", &[], false);
    }

    #[test]
    fn names_the_panic_that_ended_the_guest() {
        let console =
            "[    1.0] test\n[    2.5] Kernel panic - not syncing: panicker: on purpose\n";
        assert_eq!(
            describe_loss(console, true),
            "the kernel panicked: panicker: on purpose"
        );
        assert_eq!(
            describe_loss("[ 1.0] boot\n", false),
            "the guest hung and was killed at the deadline"
        );
        assert_eq!(
            describe_loss("", true),
            "the guest stopped without reporting a result"
        );
    }

    #[test]
    fn reads_ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f30)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f30)\n";
        let libraries = parse_ldd(output).ok();
        assert_eq!(
            libraries,
            Some(vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ])
        );
        assert_eq!(parse_ldd("\tnot a dynamic executable\n").ok(), Some(vec![]));
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn job_list_rejects_what_the_init_script_cannot_read() {
        let job = |name: &str, command: &str| Job {
            name: name.to_string(),
            cwd: "/x".to_string(),
            command: command.to_string(),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            job_list(&[job("a", "./a.sh"), job("b", "./b.sh --x")])
                .ok()
                .as_deref(),
            Some("a\t5\t/x\t./a.sh\nb\t5\t/x\t./b.sh --x\n")
        );
        assert!(job_list(&[job("a b", "x")]).is_err());
        assert!(job_list(&[job("a", "x\ty")]).is_err());
        assert!(job_list(&[job("a", "")]).is_err());
    }
}
