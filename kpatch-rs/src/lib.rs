//! kpatch-rs turns a kernel source diff into a livepatch module.
//!
//! The library holds all logic; the `kpatch-rs` binary only parses arguments and maps results
//! to exit codes, so tests call the library directly.

pub mod exit;

// The diff phase (create-diff-object's job), one module per step, in data-flow order.
pub mod compare;
pub mod correlate;
pub mod diff;
pub mod elf;
pub mod include;
pub mod output;
pub mod report;
pub mod special_sections;

// The build pipeline around the diff, in data-flow order.
pub mod kbuild;
pub mod klp_records;
pub mod module;
pub mod pipeline;

// Reading a built module back.
pub mod inspect;
pub mod post_link;
pub mod prepare;
pub mod resolve;
pub mod targets;
pub mod trees;
