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
enum Command {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            use clap::CommandFactory;
            // Printing help can only fail on a closed stdout, where there is no one to tell.
            let _ = Cli::command().print_help();
            ExitCode::from(kpatch_rs::exit::ERROR)
        }
        Some(command) => match command {},
    }
}
