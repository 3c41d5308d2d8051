//! The build side of kpatch-rs: from patch files and a kernel tree to a livepatch module, and
//! back from a built module to what it patches.
//!
//! [`build`] is the pipeline `kpatch-rs build` runs (its phases are the files of `build/`);
//! it is the only code of kpatch-rs that touches files or runs programs, and of it only
//! `build/kbuild.rs` spawns processes (`clippy.toml` enforces that). The object diff it calls
//! is the pure `kpatch_diff` crate. [`inspect`] reads a built module back, [`loader`]
//! loads, lists and removes livepatches on the running kernel (system calls, no programs),
//! and [`batch`] runs many builds, of a manifest's patch sets for its kernels, each by the
//! binary's own `build`.

pub mod batch;
pub mod build;
pub mod exit;
pub mod inspect;
pub mod loader;
pub mod package;
