//! Exit codes: part of the interface that scripts and packaging pipelines rely on.
//!
//! 0 to 3 are kept from kpatch-build so that scripts written for it keep working.

/// The command did what was asked (a module or object was written, or every check held).
pub const SUCCESS: u8 = 0;
/// Something went wrong: bad input, a failed build, an I/O error.
pub const ERROR: u8 = 1;
/// The change cannot be live patched; the message says which object, section and symbol.
pub const UNPATCHABLE: u8 = 2;
/// The patch changes no code.
pub const NO_CHANGE: u8 = 3;
/// A model check found an interleaving that violates an invariant.
pub const VIOLATION: u8 = 4;
