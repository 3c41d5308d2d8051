//! The livepatch core's module coming/going algorithm with the `klp_alive` fix, and (feature
//! `model`) a model kernel and an explorer that check it against every interleaving.
//!
//! The crate is `#![no_std]` and allocation-free without the `model` feature: only
//! [`module_notifier`] is built, which is the file the kernel compiles by path. The model is
//! userspace-only and brings in `std`.
#![no_std]

#[cfg(feature = "model")]
extern crate std;

pub mod module_notifier;

#[cfg(feature = "model")]
pub mod model;
