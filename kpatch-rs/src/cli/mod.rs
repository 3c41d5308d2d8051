//! The subcommands whose work is more than a call into the library: the file edge of
//! `kpatch-rs diff` and the model checker behind `kpatch-rs core explore`.

pub mod core_explore;
pub mod diff;
