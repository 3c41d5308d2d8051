//! `kpatch-rs diff`: the file edge of the diff phase. Reads object pairs, diffs them in
//! parallel through the library, prints the reports, writes the output objects, and turns the
//! outcomes into an exit code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kpatch_build::exit;
use kpatch_diff::report::{Outcome, Report};
use kpatch_diff::special_sections::KernelLayout;
use kpatch_diff::{diff_all_with, DiffOptions, Pair};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// ORIG.o PATCHED.o, or several such pairs (diffed in parallel).
    #[arg(required = true, num_args = 2.., value_name = "ORIG.o PATCHED.o")]
    objects: Vec<PathBuf>,
    /// Where to write the output object; with several pairs, a directory that receives one
    /// object per pair, named after the patched object. Nothing is written without it.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the report as one JSON document on stdout (an array with several pairs).
    #[arg(long)]
    json: bool,
    /// The klp object the objects belong to: `vmlinux` or a module name.
    #[arg(long, default_value = "vmlinux", alias = "target")]
    klp_object: String,
    /// How messages name the object of a single pair (default: the patched path as given).
    #[arg(long)]
    name: Option<String>,
    /// The kernel's layouts of its special sections' entries, as JSON (`layout.json` beside
    /// a `kpatch-rs build` cache entry's prepared tree); Linux 6.12 x86_64's without it.
    #[arg(long, value_name = "FILE")]
    layout: Option<PathBuf>,
}

/// Runs the command and returns its exit code: 1 if any pair failed, else 2 if any cannot be
/// live patched, else 3 if none changed, else 0.
pub fn run(args: &DiffArgs) -> Result<u8> {
    if !args.objects.len().is_multiple_of(2) {
        bail!(
            "kpatch-rs diff takes pairs of objects (ORIG.o PATCHED.o), got {} paths",
            args.objects.len()
        );
    }
    let several = args.objects.len() > 2;
    if several && args.name.is_some() {
        bail!("--name names the object of a single pair; drop it when diffing several pairs");
    }
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut inputs = Vec::with_capacity(args.objects.len() / 2);
    for pair in args.objects.chunks_exact(2) {
        let (orig, patched) = (&pair[0], &pair[1]);
        let name = match &args.name {
            Some(name) => name.clone(),
            None => patched.display().to_string(),
        };
        inputs.push((
            orig.display().to_string(),
            name,
            read(orig)?,
            read(patched)?,
            patched,
        ));
    }
    let outputs: Vec<Option<PathBuf>> = match (&args.output, several) {
        (None, _) => vec![None; inputs.len()],
        (Some(path), false) => vec![Some(path.clone())],
        (Some(dir), true) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output directory {}", dir.display()))?;
            let mut seen = HashSet::new();
            let mut paths = Vec::new();
            for (_, _, _, _, patched) in &inputs {
                let file = patched.file_name().unwrap_or_default().to_os_string();
                if !seen.insert(file.clone()) {
                    bail!(
                        "two patched objects are named {}; diff them in separate calls",
                        file.to_string_lossy()
                    );
                }
                paths.push(Some(dir.join(file)));
            }
            paths
        }
    };
    let pairs: Vec<Pair<'_>> = inputs
        .iter()
        .map(|(orig_name, name, orig, patched, _)| Pair {
            name,
            orig_name,
            orig,
            patched,
            klp_object: &args.klp_object,
        })
        .collect();
    let kernel_layout = match &args.layout {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let layout: KernelLayout = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a kernel layout (JSON: {{\"types\": {{\"struct NAME\": \
                     {{\"size\": N, \"members\": {{\"NAME\": OFFSET}}}}}}}})",
                    path.display()
                )
            })?;
            Some(layout)
        }
        None => None,
    };
    let options = DiffOptions {
        kernel_layout,
        ..Default::default()
    };
    let results = diff_all_with(&pairs, &options);

    let mut reports: Vec<&Report> = Vec::new();
    let mut failed = false;
    for (result, output) in results.iter().zip(&outputs) {
        match result {
            Err(error) => {
                super::print_error(error);
                failed = true;
            }
            Ok(result) => {
                if let (Some(path), Some(bytes)) = (output, &result.object) {
                    std::fs::write(path, bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                reports.push(&result.report);
            }
        }
    }
    let stdout = &mut std::io::stdout().lock();
    if args.json {
        match reports.as_slice() {
            [single] if !several => single.write_json(stdout)?,
            _ => {
                serde_json::to_writer_pretty(&mut *stdout, &reports)?;
                std::io::Write::write_all(stdout, b"\n")?;
            }
        }
    } else {
        for report in &reports {
            report.write_human(stdout)?;
        }
    }
    for report in &reports {
        match report.outcome {
            Outcome::Unpatchable => {
                for refusal in &report.refusals {
                    super::print_error(refusal);
                }
            }
            Outcome::NoChange => eprintln!("{}: the objects differ in no function", report.object),
            Outcome::Changed => {}
        }
    }
    let any = |outcome: Outcome| reports.iter().any(|r| r.outcome == outcome);
    Ok(if failed {
        exit::ERROR
    } else if any(Outcome::Unpatchable) {
        exit::UNPATCHABLE
    } else if any(Outcome::Changed) {
        exit::SUCCESS
    } else {
        exit::NO_CHANGE
    })
}
