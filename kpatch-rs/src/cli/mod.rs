//! The subcommands whose work is more than a call into the library: the file edge of
//! `kpatch-rs diff`, the jobs and summary lines of `kpatch-rs batch`, the model checker
//! behind `kpatch-rs core explore`, the completions and manual pages generated from the
//! command line itself, the loader's output (`kpatch-rs load|unload|list|info`) and `kpatch-rs package`.

pub mod batch;
pub mod core_explore;
pub mod diff;
pub mod docs;
pub mod load;
pub mod package;

/// The one way every subcommand prints an error or a refusal: `error: ` and the message (with
/// anyhow's chain of causes).
pub fn print_error(error: &dyn std::fmt::Display) {
    eprintln!("error: {error:#}");
}
