//! `kpatch-rs batch`: the command line of [`kpatch_build::batch`]: a manifest's jobs run
//! (or listed, or one shard of them), a line per finished job, the summary written; or the
//! summaries of shards merged into one.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use kpatch_build::batch::jobs::Shard;
use kpatch_build::batch::manifest::Manifest;
use kpatch_build::batch::summary::{self, JobResult, Summary};
use kpatch_build::batch::{self, BatchOptions};

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// The manifest (TOML, or JSON when it ends in .json): `[[kernel]]` tables with
    /// `kpatch-rs build`'s kernel inputs and `[[patchset]]` tables with the patches.
    #[arg(required_unless_present = "merge", conflicts_with = "merge")]
    manifest: Option<PathBuf>,
    /// Where the modules (OUTPUT/KERNEL/PATCHSET/livepatch-NAME.ko), the logs
    /// (OUTPUT/logs/KERNEL--PATCHSET.log) and OUTPUT/summary.json go.
    #[arg(short = 'o', long, default_value = "out")]
    output: PathBuf,
    /// CPUs to use in all, split between the jobs running at once and their make runs
    /// (default: this machine's).
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// Jobs at once (default: one per kernel cache entry among the jobs, up to -j).
    #[arg(long)]
    parallel: Option<usize>,
    /// Run part I of N (1 <= I <= N) of the jobs, sorted by kernel and patch set name: the
    /// N parts together are every job once, whatever the manifest's order.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Print the jobs (of the shard) and run none.
    #[arg(long)]
    list: bool,
    /// Print the summary as JSON on stdout (the job lines go to stderr).
    #[arg(long)]
    json: bool,
    /// Where every job's build directories are kept (default: $XDG_CACHE_HOME/kpatch-rs/build).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Merge these shard summaries into OUTPUT/summary.json instead of running a manifest.
    #[arg(long, num_args = 1.., value_name = "SUMMARY")]
    merge: Vec<PathBuf>,
}

/// Runs the command; the exit code is the summary's (0 every job built or had no change, 2
/// one was refused, 1 one failed) or 1 when the batch could not run.
pub fn run(args: &BatchArgs, tool: &str) -> Result<u8> {
    if !args.merge.is_empty() {
        let merged = summary::merge(&args.merge, &args.output)?;
        let path = args.output.join("summary.json");
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create {}", args.output.display()))?;
        merged.write(&path)?;
        return finish(args, &merged, &path);
    }
    let Some(manifest_path) = &args.manifest else {
        anyhow::bail!("pass a manifest, or --merge with shard summaries");
    };
    let manifest = Manifest::read(manifest_path)?;
    if args.list {
        let stdout = &mut std::io::stdout().lock();
        for job in batch::selected_jobs(&manifest, args.shard) {
            writeln!(stdout, "{}", job.name(&manifest))?;
        }
        return Ok(kpatch_build::exit::SUCCESS);
    }
    let options = BatchOptions {
        output: args.output.clone(),
        cpus: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        parallel: args.parallel,
        shard: args.shard,
        program: std::env::current_exe().context("cannot find the kpatch-rs binary")?,
        tool: tool.to_string(),
        cache_dir: args.cache_dir.clone(),
    };
    let json = args.json;
    let summary = batch::run(&manifest, &options, &mut |name, result| {
        let line = job_line(name, result);
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    })?;
    finish(args, &summary, &args.output.join("summary.json"))
}

fn finish(args: &BatchArgs, summary: &Summary, path: &std::path::Path) -> Result<u8> {
    let counts = &summary.counts;
    let total = counts.built + counts.refused + counts.no_change + counts.error;
    let line = format!(
        "batch: {total} job{}: {} built, {} refused, {} no change, {} failed; exit {}; summary {}",
        if total == 1 { "" } else { "s" },
        counts.built,
        counts.refused,
        counts.no_change,
        counts.error,
        summary.exit_code,
        path.display()
    );
    if args.json {
        eprintln!("{line}");
        let stdout = &mut std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut *stdout, summary)?;
        writeln!(stdout)?;
    } else {
        println!("{line}");
    }
    Ok(summary.exit_code)
}

/// One finished job: outcome, name, time, and the module or why there is none.
fn job_line(name: &str, result: &JobResult) -> String {
    let detail = match result.outcome.as_str() {
        "built" => format!(
            "{} sha256 {}",
            result
                .module
                .as_deref()
                .map_or(String::new(), |m| m.display().to_string()),
            result.sha256.as_deref().unwrap_or("?")
        ),
        "refused" => result
            .refusals
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r["object"].as_str().unwrap_or("?"),
                    r["reason"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => result
            .message
            .as_deref()
            .and_then(|m| m.lines().next())
            .unwrap_or("")
            .to_string(),
    };
    format!(
        "{:9} {name} {:.1} s: {detail} (log {})",
        result.outcome,
        result.seconds,
        result.log.display()
    )
}
