//! kpatch-rs turns a kernel source diff into a livepatch module.
//!
//! The library holds all logic; the `kpatch-rs` binary only parses arguments and maps results
//! to exit codes, so tests call the library directly.

pub mod exit;
pub mod kbuild;
pub mod klp_records;
pub mod module;
pub mod post_link;
pub mod resolve;
pub mod targets;
pub mod trees;
