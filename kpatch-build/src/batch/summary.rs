//! The batch's one JSON summary (`OUTPUT/summary.json`): per kernel, per patch set, the
//! outcome, the refusals and why, the module with its SHA-256, the log, the times; the
//! counts and the exit code over all. Paths are relative to the summary's directory, so the
//! output directory can be moved or unpacked elsewhere as a whole. Summaries of a
//! manifest's shards merge into one ([`merge`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::jobs::Shard;
use super::BatchError;
use crate::build::files;

/// The version of the summary's layout; raised when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

/// One job's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobResult {
    /// `built`, `refused`, `no-change` or `error`, as `kpatch-rs build --json` says.
    pub outcome: String,
    /// `kpatch-rs build`'s exit code (0 built, 1 error, 2 refused, 3 no change); None when
    /// it did not run or a signal ended it.
    pub exit_code: Option<i32>,
    /// Why no module was built (None when one was).
    pub message: Option<String>,
    /// Each refusal: `object`, `section`, `symbol`, `reason`.
    pub refusals: Vec<serde_json::Value>,
    /// The module written, relative to the summary.
    pub module: Option<PathBuf>,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
    /// The job's log (`kpatch-rs build`'s standard error), relative to the summary.
    pub log: PathBuf,
    /// Its `--json` document, relative to the summary.
    pub report: Option<PathBuf>,
    /// When it started, seconds since 1970, and how long it took.
    pub started_unix: u64,
    pub seconds: f64,
    /// Seconds per build phase that ran.
    pub timings: serde_json::Value,
}

impl JobResult {
    /// A job that has not (yet) told anything: an error until its report says otherwise.
    pub fn error(log: PathBuf, started_unix: u64) -> JobResult {
        JobResult {
            outcome: "error".to_string(),
            exit_code: None,
            message: None,
            refusals: Vec::new(),
            module: None,
            sha256: None,
            bytes: None,
            log,
            report: None,
            started_unix,
            seconds: 0.0,
            timings: serde_json::Value::Array(Vec::new()),
        }
    }

    /// The outcome, refusals, module and digest of what `kpatch-rs build --json` printed,
    /// module paths made relative to `output`. A job whose report is missing or disagrees
    /// with its exit code is an error.
    pub fn fill_from_report(&mut self, stdout: &[u8], output: &Path) {
        let code = self.exit_code;
        let Ok(report) = serde_json::from_slice::<serde_json::Value>(stdout) else {
            self.message = Some(format!(
                "kpatch-rs build ended with {} and printed no report; see {}",
                code.map_or("a signal".to_string(), |c| format!("exit code {c}")),
                self.log.display()
            ));
            return;
        };
        let outcome = report["outcome"].as_str().unwrap_or("error");
        let expected = match outcome {
            "built" => Some(crate::exit::SUCCESS),
            "refused" => Some(crate::exit::UNPATCHABLE),
            "no-change" => Some(crate::exit::NO_CHANGE),
            _ => None,
        };
        if expected.is_some() && code != expected.map(i32::from) {
            self.message = Some(format!(
                "kpatch-rs build's report says {outcome} but it exited with {code:?}; see {}",
                self.log.display()
            ));
            return;
        }
        self.outcome = if expected.is_some() { outcome } else { "error" }.to_string();
        self.message = report["message"].as_str().map(str::to_string);
        if self.outcome == "error" && self.message.is_none() {
            self.message = Some(format!("see {}", self.log.display()));
        }
        self.refusals = report["refusals"].as_array().cloned().unwrap_or_default();
        self.timings = report["timings"].clone();
        if self.outcome == "built" {
            self.module = report["module"].as_str().map(|module| {
                let module = Path::new(module);
                module
                    .strip_prefix(output)
                    .map_or_else(|_| module.to_path_buf(), Path::to_path_buf)
            });
            self.sha256 = report["output"]["sha256"].as_str().map(str::to_string);
            self.bytes = report["output"]["bytes"].as_u64();
        }
    }
}

/// How many jobs ended each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub built: usize,
    pub refused: usize,
    #[serde(rename = "no-change")]
    pub no_change: usize,
    pub error: usize,
}

/// The summary of a batch, or of merged shards.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub schema_version: u32,
    pub tool: String,
    /// The manifest (None for a merge of several).
    pub manifest: Option<PathBuf>,
    /// The part of the manifest's jobs this run did; None for all of them.
    pub shard: Option<Shard>,
    /// The batch's exit code ([`Summary::exit_code_of`]).
    pub exit_code: u8,
    pub counts: Counts,
    /// Kernel name to patch set name to result.
    pub kernels: BTreeMap<String, BTreeMap<String, JobResult>>,
}

impl Summary {
    pub fn new(
        tool: String,
        manifest: Option<PathBuf>,
        shard: Option<Shard>,
        kernels: BTreeMap<String, BTreeMap<String, JobResult>>,
    ) -> Summary {
        let mut counts = Counts::default();
        for result in kernels.values().flat_map(BTreeMap::values) {
            match result.outcome.as_str() {
                "built" => counts.built += 1,
                "refused" => counts.refused += 1,
                "no-change" => counts.no_change += 1,
                _ => counts.error += 1,
            }
        }
        Summary {
            schema_version: SCHEMA_VERSION,
            tool,
            manifest,
            shard,
            exit_code: Summary::exit_code_of(&counts),
            counts,
            kernels,
        }
    }

    /// 1 when any job failed (an error), else 2 when any was refused (cannot be live
    /// patched), else 0: every job built or had no change to build.
    pub fn exit_code_of(counts: &Counts) -> u8 {
        if counts.error > 0 {
            crate::exit::ERROR
        } else if counts.refused > 0 {
            crate::exit::UNPATCHABLE
        } else {
            crate::exit::SUCCESS
        }
    }

    /// Every job's result, as `KERNEL/PATCHSET` and the result, in name order.
    pub fn jobs(&self) -> impl Iterator<Item = (String, &JobResult)> {
        self.kernels.iter().flat_map(|(kernel, patchsets)| {
            patchsets
                .iter()
                .map(move |(patchset, result)| (format!("{kernel}/{patchset}"), result))
        })
    }

    /// Writes the summary, all or nothing.
    pub fn write(&self, path: &Path) -> Result<(), BatchError> {
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| BatchError::Internal(format!("cannot serialise the summary: {e}")))?;
        text.push(b'\n');
        files::write_atomically(path, &text)?;
        Ok(())
    }

    /// Reads a summary written by [`Summary::write`].
    pub fn read(path: &Path) -> Result<Summary, BatchError> {
        let error = |message: String| BatchError::Summary {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let summary: Summary = serde_json::from_slice(&text).map_err(|e| error(e.to_string()))?;
        if summary.schema_version != SCHEMA_VERSION {
            return Err(error(format!(
                "schema version {} is not {SCHEMA_VERSION}",
                summary.schema_version
            )));
        }
        Ok(summary)
    }
}

/// Joins the summaries at `paths` (of one manifest's shards) into one for `output`: every
/// job once (a job in two summaries is an error), its paths made relative to `output`
/// where the shard's directory lies under it, else absolute.
pub fn merge(paths: &[PathBuf], output: &Path) -> Result<Summary, BatchError> {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let output = absolute(output);
    let mut kernels: BTreeMap<String, BTreeMap<String, JobResult>> = BTreeMap::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut tool = None;
    for path in paths {
        let summary = Summary::read(path)?;
        tool.get_or_insert(summary.tool.clone());
        let directory = absolute(path.parent().unwrap_or(Path::new(".")));
        let rebase = |relative: &Path| {
            let full = directory.join(relative);
            full.strip_prefix(&output)
                .map_or_else(|_| full.clone(), Path::to_path_buf)
        };
        for (kernel, patchsets) in summary.kernels {
            for (patchset, mut result) in patchsets {
                let job = format!("{kernel}/{patchset}");
                if let Some(first) = origin.insert(job.clone(), path.clone()) {
                    return Err(BatchError::DuplicateJob {
                        job,
                        first,
                        second: path.clone(),
                    });
                }
                result.log = rebase(&result.log);
                result.report = result.report.as_deref().map(rebase);
                result.module = result.module.as_deref().map(rebase);
                kernels
                    .entry(kernel.clone())
                    .or_default()
                    .insert(patchset, result);
            }
        }
    }
    Ok(Summary::new(tool.unwrap_or_default(), None, None, kernels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: &str) -> JobResult {
        JobResult {
            outcome: outcome.to_string(),
            ..JobResult::error(PathBuf::from("logs/x.log"), 0)
        }
    }

    fn summary_of(jobs: &[(&str, &str, &str)]) -> Summary {
        let mut kernels: BTreeMap<String, BTreeMap<String, JobResult>> = BTreeMap::new();
        for (kernel, patchset, outcome) in jobs {
            kernels
                .entry(kernel.to_string())
                .or_default()
                .insert(patchset.to_string(), result(outcome));
        }
        Summary::new("kpatch-rs test".into(), None, None, kernels)
    }

    #[test]
    fn the_exit_code_is_the_worst_outcome() {
        let built = summary_of(&[("a", "p", "built"), ("a", "q", "no-change")]);
        assert_eq!(built.exit_code, 0);
        assert_eq!(built.counts.no_change, 1);
        let refused = summary_of(&[("a", "p", "built"), ("b", "p", "refused")]);
        assert_eq!(refused.exit_code, 2);
        let failed = summary_of(&[("a", "p", "error"), ("b", "p", "refused")]);
        assert_eq!(failed.exit_code, 1);
        assert_eq!(summary_of(&[]).exit_code, 0);
    }

    #[test]
    fn a_report_makes_the_result_and_a_missing_one_an_error() {
        let output = Path::new("/out");
        let mut built = JobResult::error(PathBuf::from("logs/k--p.log"), 0);
        built.exit_code = Some(0);
        built.fill_from_report(
            br#"{"outcome": "built", "module": "/out/k/p/livepatch-p.ko",
                 "output": {"sha256": "ab", "bytes": 9}, "timings": [["inputs", 0.1]]}"#,
            output,
        );
        assert_eq!(built.outcome, "built");
        assert_eq!(
            built.module.as_deref(),
            Some(Path::new("k/p/livepatch-p.ko"))
        );
        assert_eq!(
            (built.sha256.as_deref(), built.bytes),
            (Some("ab"), Some(9))
        );

        let mut refused = JobResult::error(PathBuf::from("l"), 0);
        refused.exit_code = Some(2);
        refused.fill_from_report(
            br#"{"outcome": "refused", "message": "m", "refusals": [{"symbol": "s"}]}"#,
            output,
        );
        assert_eq!(
            (refused.outcome.as_str(), refused.refusals.len()),
            ("refused", 1)
        );

        let mut crashed = JobResult::error(PathBuf::from("logs/k--p.log"), 0);
        crashed.exit_code = Some(101);
        crashed.fill_from_report(b"", output);
        assert_eq!(crashed.outcome, "error");
        assert!(crashed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit code 101") && m.contains("logs/k--p.log")));

        // A report that contradicts the exit code is not believed.
        let mut odd = JobResult::error(PathBuf::from("l"), 0);
        odd.exit_code = Some(1);
        odd.fill_from_report(br#"{"outcome": "built", "module": "/out/x.ko"}"#, output);
        assert_eq!((odd.outcome.as_str(), odd.module.clone()), ("error", None));
    }

    #[test]
    fn shards_merge_into_one_and_a_job_twice_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("all");
        let mut one = summary_of(&[("a", "p", "built")]);
        if let Some(job) = one.kernels.get_mut("a").and_then(|p| p.get_mut("p")) {
            job.module = Some(PathBuf::from("a/p/livepatch-p.ko"));
        }
        let two = summary_of(&[("a", "q", "refused"), ("b", "p", "no-change")]);
        std::fs::create_dir_all(out.join("1")).expect("mkdir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        one.write(&out.join("1/summary.json")).expect("write");
        two.write(&elsewhere.join("summary.json")).expect("write");
        let merged = merge(
            &[out.join("1/summary.json"), elsewhere.join("summary.json")],
            &out,
        )
        .expect("merge");
        let jobs: Vec<String> = merged.jobs().map(|(name, _)| name).collect();
        assert_eq!(jobs, ["a/p", "a/q", "b/p"]);
        assert_eq!(merged.exit_code, 2);
        assert_eq!(
            merged.kernels["a"]["p"].module.as_deref(),
            Some(Path::new("1/a/p/livepatch-p.ko"))
        );
        assert_eq!(merged.kernels["a"]["p"].log, Path::new("1/logs/x.log"));
        assert_eq!(merged.kernels["b"]["p"].log, elsewhere.join("logs/x.log"));

        let error = merge(
            &[out.join("1/summary.json"), out.join("1/summary.json")],
            &out,
        )
        .expect_err("a job twice");
        assert!(
            error.to_string().starts_with("job a/p is in both"),
            "{error}"
        );
        let error = merge(&[dir.path().join("none.json")], &out).expect_err("no file");
        assert!(
            error.to_string().starts_with("cannot read the summary"),
            "{error}"
        );
    }
}
