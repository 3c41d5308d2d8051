//! The `kpatch-rs` command line: parses arguments, calls the library, maps results to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod diff_command;

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
    Diff(diff_command::DiffArgs),
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
        Some(Command::Diff(args)) => exit_code(diff_command::run(&args)),
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
