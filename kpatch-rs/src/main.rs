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
    /// Check the Rust livepatch core.
    Core {
        #[command(subcommand)]
        command: CoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CoreCommand {
    /// Run every interleaving of a scenario on the model kernel and check the invariants;
    /// exit 0 when all hold, 4 with the shortest violating trace.
    Explore {
        /// Bind objects the way the kernel did before the klp_alive fix.
        #[arg(long)]
        pre_fix: bool,
        /// A built-in scenario (seed-stacking, seed-going, two-modules, stress) or a scenario file.
        scenario: String,
    },
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
        Some(Command::Core {
            command: CoreCommand::Explore { pre_fix, scenario },
        }) => match kpatch_rs::core_explore::run(&scenario, pre_fix, &mut std::io::stdout()) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(kpatch_rs::exit::ERROR)
            }
        },
    }
}
