//! kpatch-rs turns a kernel source diff into a livepatch module.
//!
//! The library holds all logic; the `kpatch-rs` binary only parses arguments and maps results
//! to exit codes, so tests call the library directly.

pub mod exit;

// The diff phase (create-diff-object's job): elf -> correlate -> compare -> include (with
// special_sections) -> output, driven by diff, described by report.
pub mod compare;
pub mod correlate;
pub mod diff;
pub mod elf;
pub mod include;
pub mod output;
pub mod report;
pub mod special_sections;

// The build pipeline around it, driven by pipeline: targets -> trees -> kbuild -> (diff) ->
// resolve -> prepare -> klp_records -> module -> post_link.
pub mod kbuild;
pub mod klp_records;
pub mod module;
pub mod pipeline;
pub mod post_link;
pub mod prepare;
pub mod resolve;
pub mod targets;
pub mod trees;

// Reading a built module back.
pub mod inspect;

// The Rust livepatch core's model checker, as a command.
pub mod core_explore;
