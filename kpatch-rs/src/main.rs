//! The `kpatch-rs` command line: parses arguments, calls the library, maps results to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kpatch-rs",
    version,
    about = "Build Linux kernel livepatch modules from source diffs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Diff an original and a patched object (create-diff-object): report changed and new
    /// functions and write an object holding them and what they need.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
struct DiffArgs {
    /// The object built from the original source.
    orig: std::path::PathBuf,
    /// The same object built from the patched source.
    patched: std::path::PathBuf,
    /// Where to write the output object (nothing is written without it).
    #[arg(short, long)]
    output: Option<std::path::PathBuf>,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// The binary the object is linked into: `vmlinux` or a module name.
    #[arg(long, default_value = "vmlinux")]
    target: String,
    /// How messages name the object (default: the patched path as given).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            // Printing help can only fail on a closed stdout, where there is no one to tell.
            let _ = Cli::command().print_help();
            ExitCode::from(kpatch_rs::exit::ERROR)
        }
        Some(Command::Diff(args)) => exit_code(run_diff(&args)),
    }
}

fn exit_code(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(kpatch_rs::exit::ERROR)
        }
    }
}

fn run_diff(args: &DiffArgs) -> anyhow::Result<u8> {
    use anyhow::Context;
    use kpatch_rs::report::Outcome;

    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let orig = read(&args.orig)?;
    let patched = read(&args.patched)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.patched.display().to_string());
    let orig_name = args.orig.display().to_string();
    let result = kpatch_rs::diff::diff(&kpatch_rs::diff::Pair {
        name: &name,
        orig_name: &orig_name,
        orig: &orig,
        patched: &patched,
        target: &args.target,
    })?;
    let stdout = &mut std::io::stdout().lock();
    if args.json {
        result.report.write_json(stdout)?;
    } else {
        result.report.write_human(stdout)?;
    }
    match result.report.outcome {
        Outcome::Changed => {
            if let (Some(path), Some(bytes)) = (&args.output, &result.object) {
                std::fs::write(path, bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(kpatch_rs::exit::SUCCESS)
        }
        Outcome::NoChange => {
            eprintln!("{name}: the objects differ in no function");
            Ok(kpatch_rs::exit::NO_CHANGE)
        }
        Outcome::Unpatchable => {
            for refusal in &result.report.refusals {
                eprintln!("error: {refusal}");
            }
            Ok(kpatch_rs::exit::UNPATCHABLE)
        }
    }
}
