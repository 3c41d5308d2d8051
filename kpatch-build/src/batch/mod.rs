//! `kpatch-rs batch`: the patch sets of a manifest built for its kernels, jobs in parallel,
//! one log per job and one summary.
//!
//! Each job is `kpatch-rs build --json` run by the batch's own binary (a build holds its
//! cache entry's lock through every program it starts, one build per process, and prints
//! its progress on its own standard error, which becomes the job's log), through
//! `build/kbuild.rs`, the one place that runs programs. Jobs of one kernel share a cache
//! entry and would take turns on its lock, so the scheduler starts a job only when no
//! running job uses its cache entry, and the CPUs are split between the jobs running at
//! once and their make runs.

pub mod jobs;
pub mod manifest;
pub mod summary;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use jobs::{Job, Shard};
use manifest::{Kernel, Manifest, PatchSet};
use summary::{JobResult, Summary};

use crate::build::{files, io_error, kbuild, IoError};

/// How to run a manifest's jobs.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Where modules, logs and `summary.json` go.
    pub output: PathBuf,
    /// CPUs to use in all (`-j`).
    pub cpus: usize,
    /// Jobs at once; by default as many as there are cache entries among the jobs, up to
    /// the CPUs.
    pub parallel: Option<usize>,
    /// The part of the jobs to run; None runs them all.
    pub shard: Option<Shard>,
    /// The `kpatch-rs` binary that runs each job's `build`.
    pub program: PathBuf,
    /// `kpatch-rs VERSION (commit …)`, for the summary.
    pub tool: String,
    /// `--cache-dir` for every job.
    pub cache_dir: Option<PathBuf>,
}

/// Why a batch could not run (a job's own failure is its outcome, not this).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Command(#[from] kbuild::CommandError),
    #[error("cannot read the summary {}: {message}", path.display())]
    Summary { path: PathBuf, message: String },
    #[error(
        "job {job} is in both {} and {}: merge the summaries of one manifest's shards",
        first.display(), second.display()
    )]
    DuplicateJob {
        job: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("internal error: {0}; please report it")]
    Internal(String),
}

/// The jobs this run does: the shard's part of every job, or every job.
pub fn selected_jobs(manifest: &Manifest, shard: Option<Shard>) -> Vec<Job> {
    let all = jobs::all_jobs(manifest);
    match shard {
        Some(shard) => shard.select(&all),
        None => all,
    }
}

/// How many jobs run at once, and make's `-j` for each.
pub fn split_cpus(
    cpus: usize,
    parallel: Option<usize>,
    entries: usize,
    jobs: usize,
) -> (usize, usize) {
    let cpus = cpus.max(1);
    let at_once = parallel
        .unwrap_or_else(|| entries.min(cpus))
        .clamp(1, jobs.max(1));
    (at_once, (cpus / at_once).max(1))
}

/// Runs the selected jobs and writes `OUTPUT/summary.json`; `done` hears of each job as it
/// ends.
pub fn run(
    manifest: &Manifest,
    options: &BatchOptions,
    done: &mut dyn FnMut(&str, &JobResult),
) -> Result<Summary, BatchError> {
    let output =
        std::path::absolute(&options.output).map_err(io_error("resolve", &options.output))?;
    let logs = output.join("logs");
    std::fs::create_dir_all(&logs).map_err(io_error("create", &logs))?;
    let jobs = selected_jobs(manifest, options.shard);
    let entries: Vec<u64> = manifest
        .kernels
        .iter()
        .map(|kernel| cache_entry(kernel, options.cache_dir.as_deref()))
        .collect();
    let distinct: HashSet<u64> = jobs.iter().map(|job| entries[job.kernel]).collect();
    let (at_once, make_jobs) =
        split_cpus(options.cpus, options.parallel, distinct.len(), jobs.len());

    let mut results: BTreeMap<String, BTreeMap<String, JobResult>> = BTreeMap::new();
    let mut pending: Vec<Job> = jobs;
    let mut busy: HashSet<u64> = HashSet::new();
    let (sender, receiver) = mpsc::channel::<(Job, JobResult)>();
    std::thread::scope(|scope| -> Result<(), BatchError> {
        let mut running = 0;
        loop {
            // Start what can start: the first pending job whose cache entry no running job
            // holds, so that jobs running together rarely wait for each other's lock.
            while running < at_once {
                let Some(position) = pending
                    .iter()
                    .position(|job| !busy.contains(&entries[job.kernel]))
                else {
                    break;
                };
                let job = pending.remove(position);
                busy.insert(entries[job.kernel]);
                running += 1;
                let sender = sender.clone();
                let output = &output;
                scope.spawn(move || {
                    let result = run_job(manifest, options, output, job, make_jobs);
                    let _ = sender.send((job, result));
                });
            }
            if running == 0 {
                break;
            }
            let (job, result) = receiver
                .recv()
                .map_err(|_| BatchError::Internal("a batch job's thread ended".into()))?;
            running -= 1;
            busy.remove(&entries[job.kernel]);
            done(&job.name(manifest), &result);
            results
                .entry(manifest.kernels[job.kernel].name.clone())
                .or_default()
                .insert(manifest.patchsets[job.patchset].name.clone(), result);
        }
        Ok(())
    })?;

    let summary = Summary::new(
        options.tool.clone(),
        Some(manifest.path.clone()),
        options.shard,
        results,
    );
    summary.write(&output.join("summary.json"))?;
    Ok(summary)
}

/// Which cache entry a kernel's builds use, as far as the batch can tell without asking the
/// compiler: what keys the entry (source, config, make variables) and the cache directory.
fn cache_entry(kernel: &Kernel, cache_dir: Option<&Path>) -> u64 {
    let source =
        std::fs::canonicalize(&kernel.sourcedir).unwrap_or_else(|_| kernel.sourcedir.clone());
    let config = config_path(kernel);
    let config_bytes =
        std::fs::read(&config).unwrap_or_else(|_| config.as_os_str().as_encoded_bytes().to_vec());
    let mut hash = kpatch_support::Fnv1a::new();
    hash.write(source.as_os_str().as_encoded_bytes())
        .write(&[0]);
    hash.write(&config_bytes).write(&[0]);
    hash.write(kernel.make_vars.join("\n").as_bytes())
        .write(&[0]);
    if let Some(dir) = cache_dir {
        hash.write(dir.as_os_str().as_encoded_bytes());
    }
    hash.finish()
}

/// The kernel's config: given, or `.config` beside its symbols, as `kpatch-rs build` defaults.
fn config_path(kernel: &Kernel) -> PathBuf {
    kernel.config.clone().unwrap_or_else(|| {
        kernel
            .vmlinux
            .as_ref()
            .or(kernel.system_map.as_ref())
            .and_then(|path| path.parent())
            .unwrap_or(Path::new("."))
            .join(".config")
    })
}

/// The module's name (`-n`): the patch set's `module`, else its name with `.` made `-`.
fn module_name(patchset: &PatchSet) -> String {
    patchset
        .module
        .clone()
        .unwrap_or_else(|| patchset.name.replace('.', "-"))
}

/// `kpatch-rs build`'s arguments for one job.
fn build_args(
    kernel: &Kernel,
    patchset: &PatchSet,
    output: &Path,
    make_jobs: usize,
    cache_dir: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["build".into(), "--json".into()];
    let mut pair = |flag: &str, value: &dyn AsRef<std::ffi::OsStr>| {
        args.push(flag.into());
        args.push(value.as_ref().to_os_string());
    };
    pair("--sourcedir", &kernel.sourcedir);
    if let Some(config) = &kernel.config {
        pair("--config", config);
    }
    if let Some(vmlinux) = &kernel.vmlinux {
        pair("--vmlinux", vmlinux);
    }
    if let Some(map) = &kernel.system_map {
        pair("--system-map", map);
    }
    if let Some(symvers) = &kernel.symvers {
        pair("--symvers", symvers);
    }
    if let Some(modules) = &kernel.modules {
        pair("--modules", modules);
    }
    if let Some(release) = &kernel.kernel_release {
        pair("--kernel-release", release);
    }
    for var in &kernel.make_vars {
        pair("--make-var", var);
    }
    if let (Some(key), Some(cert)) = (&kernel.sign_key, &kernel.sign_cert) {
        pair("--sign-key", key);
        pair("--sign-cert", cert);
    }
    for type_name in &patchset.allow_layout_change {
        pair("--allow-layout-change", type_name);
    }
    pair("--name", &module_name(patchset));
    pair("--output", &output);
    pair("--jobs", &make_jobs.to_string());
    if let Some(dir) = cache_dir {
        pair("--cache-dir", &dir);
    }
    if let Some(root) = &kernel.chroot {
        pair("--chroot", root);
    }
    if kernel.skip_compiler_check {
        args.push("--skip-compiler-check".into());
    }
    if patchset.no_replace {
        args.push("--no-replace".into());
    }
    args.push("--".into());
    args.extend(
        patchset
            .patches
            .iter()
            .map(|patch| patch.as_os_str().to_os_string()),
    );
    args
}

/// Runs one job and makes its result of what `kpatch-rs build --json` printed.
fn run_job(
    manifest: &Manifest,
    options: &BatchOptions,
    output: &Path,
    job: Job,
    make_jobs: usize,
) -> JobResult {
    let kernel = &manifest.kernels[job.kernel];
    let patchset = &manifest.patchsets[job.patchset];
    let stem = format!("{}--{}", kernel.name, patchset.name);
    let log = PathBuf::from("logs").join(format!("{stem}.log"));
    let report = PathBuf::from("logs").join(format!("{stem}.json"));
    let module_dir = output.join(&kernel.name).join(&patchset.name);
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let started = Instant::now();
    let mut result = JobResult::error(log.clone(), started_unix);
    // A module left by an earlier run would pass for this one's.
    let stale = module_dir.join(format!("livepatch-{}.ko", module_name(patchset)));
    if let Err(error) = std::fs::remove_file(&stale) {
        if error.kind() != std::io::ErrorKind::NotFound {
            result.message = Some(io_error("remove", &stale)(error).to_string());
            return result;
        }
    }
    let log_path = output.join(&log);
    if let Err(error) = std::fs::write(&log_path, "") {
        result.message = Some(io_error("write", &log_path)(error).to_string());
        return result;
    }
    let args = build_args(
        kernel,
        patchset,
        &module_dir,
        make_jobs,
        options.cache_dir.as_deref(),
    );
    let ran = kbuild::run_job(&options.program, &args, &log_path);
    result.seconds = started.elapsed().as_secs_f64();
    let (code, stdout) = match ran {
        Ok(ran) => ran,
        Err(error) => {
            result.message = Some(error.to_string());
            return result;
        }
    };
    let _ = files::write_atomically(&output.join(&report), &stdout);
    result.report = Some(report);
    result.exit_code = code;
    result.fill_from_report(&stdout, output);
    let ending = match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    };
    append(
        &log_path,
        &format!(
            "kpatch-rs batch: {} ({ending}) after {:.1} s\n",
            result.outcome, result.seconds
        ),
    );
    result
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpus_are_split_between_jobs_and_their_make_runs() {
        // One cache entry: one job at a time, with every CPU.
        assert_eq!(split_cpus(8, None, 1, 6), (1, 8));
        // Four kernels on eight CPUs: four at once, two CPUs each.
        assert_eq!(split_cpus(8, None, 4, 12), (4, 2));
        // More kernels than CPUs: one per CPU.
        assert_eq!(split_cpus(2, None, 5, 5), (2, 1));
        // Asked for: never more jobs at once than there are jobs.
        assert_eq!(split_cpus(8, Some(3), 1, 6), (3, 2));
        assert_eq!(split_cpus(8, Some(10), 1, 2), (2, 4));
        assert_eq!(split_cpus(0, None, 0, 0), (1, 1));
    }

    /// A stand-in for `kpatch-rs build`: notes when it starts and ends (by source tree) in
    /// `events`, says something on stderr, and prints the report of `outcome`.
    fn fake_build(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("fake-kpatch-rs");
        let events = dir.join("events");
        let text = format!(
            "#!/bin/sh\n\
             src=$4\n\
             echo \"start $src\" >> {events}\n\
             echo \"fake build of $src\" >&2\n\
             sleep 0.3\n\
             echo \"end $src\" >> {events}\n\
             case \"$*\" in\n\
             *refuse.patch*) echo '{{\"outcome\": \"refused\", \"message\": \"m\", \"refusals\": [{{\"object\": \"o\"}}]}}'; exit 2;;\n\
             esac\n\
             echo '{{\"outcome\": \"built\", \"module\": \"/nowhere/livepatch-x.ko\", \"output\": {{\"sha256\": \"00\", \"bytes\": 1}}}}'\n",
            events = events.display()
        );
        std::fs::write(&script, text).expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        script
    }

    #[test]
    fn jobs_of_one_cache_entry_take_turns_and_others_run_beside_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let program = fake_build(dir.path());
        // `a` and `a-again` are one cache entry (same tree, same config); `b` is another.
        let text = "[[kernel]]\nname = \"a\"\nsourcedir = \"src-a\"\nvmlinux = \"a/vmlinux\"\n\
                    [[kernel]]\nname = \"a-again\"\nsourcedir = \"src-a\"\nvmlinux = \"a/vmlinux\"\n\
                    [[kernel]]\nname = \"b\"\nsourcedir = \"src-b\"\nvmlinux = \"b/vmlinux\"\n\
                    [[patchset]]\nname = \"p\"\npatches = [\"p.patch\"]\n\
                    [[patchset]]\nname = \"q\"\npatches = [\"refuse.patch\"]\n";
        let manifest = Manifest::parse(&dir.path().join("m.toml"), text).expect("manifest");
        let options = BatchOptions {
            output: dir.path().join("out"),
            cpus: 4,
            parallel: None,
            shard: None,
            program,
            tool: "kpatch-rs test".to_string(),
            cache_dir: None,
        };
        let mut finished = Vec::new();
        let summary = run(&manifest, &options, &mut |name, result| {
            finished.push((name.to_string(), result.outcome.clone()));
        })
        .expect("batch runs");
        assert_eq!(finished.len(), 6);
        assert_eq!(summary.counts.built, 3);
        assert_eq!(summary.counts.refused, 3);
        assert_eq!(summary.exit_code, crate::exit::UNPATCHABLE);
        assert_eq!(summary.kernels["b"]["q"].refusals[0]["object"], "o");

        // Replay the starts and ends: never two jobs of one entry at once, and the two
        // entries' jobs side by side at some point.
        let events = std::fs::read_to_string(dir.path().join("events")).expect("events");
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        let mut most_at_once = 0;
        for line in events.lines() {
            let (what, source) = line.split_once(' ').expect("event");
            let count = running.entry(source.to_string()).or_default();
            if what == "start" {
                *count += 1;
                assert_eq!(*count, 1, "two jobs of {source} at once:\n{events}");
            } else {
                *count -= 1;
            }
            most_at_once = most_at_once.max(running.values().sum::<usize>());
        }
        assert_eq!(most_at_once, 2, "{events}");

        // Each job's log: the command line, what the build said, how it ended.
        let log = std::fs::read_to_string(dir.path().join("out/logs/a-again--q.log")).expect("log");
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            lines[0].starts_with("$ ") && lines[0].contains(" build --json "),
            "{log}"
        );
        assert!(
            lines[1].starts_with("fake build of ") && lines[1].ends_with("src-a"),
            "{log}"
        );
        assert!(
            lines[2].starts_with("kpatch-rs batch: refused (exit code 2) after "),
            "{log}"
        );
        let written = Summary::read(&dir.path().join("out/summary.json")).expect("summary");
        assert_eq!(written, summary);
    }

    #[test]
    fn a_jobs_arguments_are_kpatch_rs_builds() {
        let text = "[[kernel]]\nname = \"k\"\nsourcedir = \"src\"\nsystem_map = \"b/System.map\"\n\
                    make_vars = [\"CC=ccache gcc\"]\nkernel_release = \"6.12.0-1\"\n\
                    chroot = \"roots/trixie\"\n\
                    [[patchset]]\nname = \"fix.v2\"\npatches = [\"a.patch\", \"b.patch\"]\n\
                    no_replace = true\nallow_layout_change = [\"struct fd_data\"]\n";
        let manifest = Manifest::parse(Path::new("/m/batch.toml"), text).expect("manifest");
        let args = build_args(
            &manifest.kernels[0],
            &manifest.patchsets[0],
            Path::new("/out/k/fix.v2"),
            3,
            None,
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "build --json --sourcedir /m/src --system-map /m/b/System.map \
             --kernel-release 6.12.0-1 --make-var CC=ccache gcc \
             --allow-layout-change struct fd_data --name fix-v2 --output /out/k/fix.v2 \
             --jobs 3 --chroot /m/roots/trixie --no-replace -- /m/a.patch /m/b.patch"
        );
        assert_eq!(config_path(&manifest.kernels[0]), Path::new("/m/b/.config"));
    }
}
