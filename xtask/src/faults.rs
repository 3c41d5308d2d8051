//! `cargo xtask faults [--kills N] [--seed S] [--keep]`: `kpatch-rs build` killed with
//! SIGKILL at random points, then run again, and builds side by side; each must lose nothing.
//!
//! 1. The clean reference: `cmdline.patch` built at once into two caches (`XDG_CACHE_HOME`,
//!    never killed, kept in `~/.cache/kpatch-rs/faults/`) that share the test kernel's source
//!    tree; both must succeed with the same bytes. A warm rebuild into one of them gives the
//!    time of a warm run.
//! 2. N kills in a third cache, which starts empty: each build is killed after a random delay
//!    (the first tenth of them, at least one, within a cold run's time, so that configuring and preparing
//!    the build directories are killed too, the rest within a warm run's), either kpatch-rs
//!    alone (its make goes on, holding the cache entry's lock, as after `kill -9`) or its whole
//!    process group (as when a session dies). Where each kill landed is read from the
//!    programs kpatch-rs was running. After each kill the output directory holds nothing or the
//!    reference module, never a part of one.
//! 3. A normal run in that cache: the reference's bytes, and only the module in the output
//!    directory. Then two builds at once in it (one waits for the other's lock): both the
//!    reference's bytes.
//! 4. The source tree's fingerprint (every entry's metadata, the patched file's contents)
//!    is what it was before.
//!
//! The delays come from a seeded generator; the seed is printed, and `--seed` replays it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::kernel::{ensure_kernel, KernelDirs, KernelSpec};

/// How many kills CI runs: one of them during a cold run.
pub const CI_KILLS: usize = 6;

const PATCH: &str = "fixtures/patches/cmdline.patch";
const MODULE: &str = "livepatch-cmdline.ko";
const TOUCHED: &str = "fs/proc/cmdline.c";

pub fn run(args: &[String]) -> Result<()> {
    let mut kills = 50;
    let mut seed = None;
    let mut keep = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--kills" => kills = rest.next().context("--kills needs a number")?.parse()?,
            "--seed" => seed = Some(rest.next().context("--seed needs a number")?.parse()?),
            "--keep" => keep = true,
            other => bail!("unknown option `{other}`; usage: cargo xtask faults [--kills N] [--seed S] [--keep]"),
        }
    }
    let sh = Shell::new()?;
    let kernel = ensure_kernel(&sh, &KernelSpec::stock())?;
    let kpatch = crate::kpatch::build_kpatch_rs(&sh)?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let work = std::env::temp_dir().join(format!("kpatch-rs-faults-{}", std::process::id()));
    let result = faults(&kpatch, &kernel, &work, kills, seed);
    if keep {
        eprintln!("faults: kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    match result {
        Ok(summary) => {
            println!("PASS  faults: {summary}");
            Ok(())
        }
        Err(error) => {
            println!("FAIL  faults (seed {seed}): {error:#}");
            bail!("faults failed (replay with --seed {seed})")
        }
    }
}

/// SplitMix64: enough randomness for delays, and the same numbers for the same seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniformly in [0, limit).
    fn below(&mut self, limit: Duration) -> Duration {
        let nanos = limit.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % nanos)
    }
}

/// `kpatch-rs build` of the patch with its cache under `xdg` (`XDG_CACHE_HOME`), into `out`.
fn build_command(kpatch: &Path, kernel: &KernelDirs, xdg: &Path, out: &Path) -> Command {
    let mut command = Command::new(kpatch);
    command
        .env("XDG_CACHE_HOME", xdg)
        .arg("build")
        .arg("--sourcedir")
        .arg(&kernel.source)
        .arg("--vmlinux")
        .arg(kernel.build.join("vmlinux"))
        .args(["--name", "cmdline", "--output"])
        .arg(out)
        .arg(crate::project_root().join(PATCH))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in &kernel.make_vars {
        command.args(["--make-var", var]);
    }
    command
}

/// Runs builds at once and returns each one's module; any failure is an error.
fn builds_at_once(commands: Vec<Command>, outs: &[&Path]) -> Result<Vec<Vec<u8>>> {
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut command| command.spawn().context("cannot start kpatch-rs"))
        .collect::<Result<_>>()?;
    for (child, out) in children.into_iter().zip(outs) {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "the build into {} failed ({}): {}",
                out.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    outs.iter()
        .map(|out| {
            std::fs::read(out.join(MODULE))
                .with_context(|| format!("no module in {}", out.display()))
        })
        .collect()
}

fn fingerprint(kernel: &KernelDirs) -> Result<(usize, u64)> {
    kpatch_support::tree_fingerprint(&kernel.source, &[TOUCHED])
        .with_context(|| format!("cannot fingerprint {}", kernel.source.display()))
}

fn faults(
    kpatch: &Path,
    kernel: &KernelDirs,
    work: &Path,
    kills: usize,
    seed: u64,
) -> Result<String> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let before = fingerprint(kernel)?;
    eprintln!(
        "faults: seed {seed}, {kills} kills; source tree {} entries",
        before.0
    );

    // 1. Two clean builds at once, two caches sharing the source tree. They are never
    // killed, so they are kept between runs (empty the first time, as on a new machine).
    let kept = crate::cache_dir("faults")?;
    let (xdg_a, xdg_b) = (kept.join("xdg-a"), kept.join("xdg-b"));
    let (out_a, out_b) = (work.join("out-a"), work.join("out-b"));
    let started = Instant::now();
    let modules = builds_at_once(
        vec![
            build_command(kpatch, kernel, &xdg_a, &out_a),
            build_command(kpatch, kernel, &xdg_b, &out_b),
        ],
        &[&out_a, &out_b],
    )
    .context("two clean builds at once, two caches")?;
    let cold = started.elapsed();
    if modules[0] != modules[1] {
        bail!("two clean builds into two caches gave different bytes");
    }
    let reference = modules[0].clone();
    let started = Instant::now();
    let out_warm = work.join("out-warm");
    let warm_module = builds_at_once(
        vec![build_command(kpatch, kernel, &xdg_a, &out_warm)],
        &[&out_warm],
    )?;
    let warm = started.elapsed();
    if warm_module[0] != reference {
        bail!("a warm rebuild gave other bytes than the clean build");
    }
    eprintln!(
        "faults: clean builds (two at once) {:.1} s, warm rebuild {:.1} s, module {} bytes",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        reference.len()
    );

    // 2. The kills.
    let xdg_kill = work.join("xdg-kill");
    let out_kill = work.join("out-kill");
    let mut random = Random(seed);
    let cold_kills = (kills / 10).max(1).min(kills);
    // A cold run alone takes about 0.6 of two cold runs side by side on two cores; when the
    // kept caches were warm, a cold run's preparation takes about half a minute here.
    let cold = cold.mul_f64(0.6).max(Duration::from_secs(30));
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    let (mut alone, mut group, mut finished) = (0, 0, 0);
    for round in 0..kills {
        wait_for_locks(&xdg_kill)?;
        let limit = if round < cold_kills { cold } else { warm };
        let delay = random.below(limit);
        let whole_group = random.next() % 2 == 1;
        let mut command = build_command(kpatch, kernel, &xdg_kill, &out_kill);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.stderr(Stdio::null());
        let mut child = command.spawn().context("cannot start kpatch-rs")?;
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < delay {
            if let Some(status) = child.try_wait()? {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let phase = match exited {
            Some(status) => {
                if !status.success() {
                    bail!("round {round}: an unkilled build failed ({status})");
                }
                finished += 1;
                "finished before the kill".to_string()
            }
            None => {
                let phase = phase_of(child.id());
                if whole_group {
                    let status = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .status()?;
                    if !status.success() {
                        bail!("round {round}: cannot kill the process group");
                    }
                    group += 1;
                } else {
                    child.kill()?;
                    alone += 1;
                }
                child.wait()?;
                phase
            }
        };
        *by_phase.entry(phase.clone()).or_default() += 1;
        // The output directory holds the whole module or none.
        if let Ok(bytes) = std::fs::read(out_kill.join(MODULE)) {
            if bytes != reference {
                bail!(
                    "round {round} (killed after {:.2} s, {phase}): {} is not the reference module",
                    delay.as_secs_f64(),
                    out_kill.join(MODULE).display()
                );
            }
        }
        eprintln!(
            "faults: round {round}: {} after {:.2} s: {phase}",
            if exited.is_some() {
                "not killed"
            } else if whole_group {
                "killed the group"
            } else {
                "killed kpatch-rs"
            },
            delay.as_secs_f64()
        );
    }

    // 3. The run after the kills, then two at once in the same cache.
    let after = builds_at_once(
        vec![build_command(kpatch, kernel, &xdg_kill, &out_kill)],
        &[&out_kill],
    )
    .context("the build after the kills")?;
    if after[0] != reference {
        bail!("the build after the kills gave other bytes than the clean build");
    }
    let listing: Vec<String> = std::fs::read_dir(&out_kill)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if listing != [MODULE] {
        bail!("the output directory holds {listing:?}, not just {MODULE}");
    }
    let (out_c, out_d) = (work.join("out-c"), work.join("out-d"));
    let modules = builds_at_once(
        vec![
            build_command(kpatch, kernel, &xdg_kill, &out_c),
            build_command(kpatch, kernel, &xdg_kill, &out_d),
        ],
        &[&out_c, &out_d],
    )
    .context("two builds at once, one cache")?;
    if modules.iter().any(|module| *module != reference) {
        bail!("two builds at once in one cache gave other bytes");
    }

    // 4. The user's tree.
    let after_tree = fingerprint(kernel)?;
    if after_tree != before {
        bail!("the source tree changed: {before:?} before, {after_tree:?} after");
    }
    let phases: Vec<String> = by_phase
        .iter()
        .map(|(phase, count)| format!("{phase} {count}"))
        .collect();
    Ok(format!(
        "seed {seed}: {} kills survived ({alone} of kpatch-rs alone, {group} of its process \
         group; {cold_kills} in a cold run), {finished} builds done before their kill; where: {}; \
         then the same bytes ({} bytes), in one cache two builds at once and in two caches \
         two at once the same bytes, the source tree unchanged ({} entries)",
        alone + group,
        phases.join(", "),
        reference.len(),
        before.0
    ))
}

/// Waits until no process holds a cache entry's lock under `xdg` (the make of a killed
/// kpatch-rs goes on holding it), so that each kill lands in a build rather than in a wait.
fn wait_for_locks(xdg: &Path) -> Result<()> {
    let build = xdg.join("kpatch-rs/build");
    let Ok(entries) = std::fs::read_dir(&build) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let lock = entry.path().join("lock");
        if let Ok(file) = std::fs::File::options().read(true).write(true).open(&lock) {
            file.lock()
                .with_context(|| format!("cannot lock {}", lock.display()))?;
            file.unlock()?;
        }
    }
    Ok(())
}

/// What kpatch-rs (process `pid`) is doing, from the programs it runs.
fn phase_of(pid: u32) -> String {
    let mut words = Vec::new();
    for child in children_of(pid) {
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let has = |word: &str| args.iter().any(|a| a == word || a.starts_with(word));
        let program = args.first().map(|p| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let word = match program.as_deref() {
            Some("patch") => "patch",
            Some("ld") => "ld -r of the module",
            Some("make") if has("olddefconfig") => "olddefconfig",
            Some("make") if has("modules_prepare") => "modules_prepare",
            Some("make") if has("livepatch-main.o") => "compiling the module source",
            Some("make") if has("M=") => "linking the module",
            Some("make") if has("objtool-enabled=y") => "compiling the units",
            Some("make") => "make",
            Some(_) if has("--version") => "asking gcc its version",
            Some(other) => return format!("running {other}"),
            None => continue,
        };
        if !words.contains(&word) {
            words.push(word);
        }
    }
    if words.is_empty() {
        "in kpatch-rs itself (inputs, patched tree, diff, resolve, post-link)".to_string()
    } else {
        words.join(" + ")
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the comm may hold spaces, so read after its `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
