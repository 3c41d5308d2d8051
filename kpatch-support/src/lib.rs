//! What every crate of the workspace, its tests and xtask would otherwise write for itself:
//! the hash that names cache entries, where the caches live, and the rule for a test whose
//! input (a built kernel, kernel fixtures) is missing. No dependencies, so that any crate can
//! use it, the `no_std` core's tests included.

use std::path::PathBuf;

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike `DefaultHasher`, so a
/// cache key computed today finds the entry written yesterday.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mixes `bytes` into the hash.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash as 16 hex digits, the form cache directories are named by.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The hash of one byte string.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    Fnv1a::new().write(bytes).finish()
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/kpatch-rs`, the root of every cache kpatch-rs and its
/// harness keep (an empty `XDG_CACHE_HOME` counts as unset, as the XDG spec says); `None`
/// when neither variable is set.
pub fn cache_root() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(base.join("kpatch-rs"))
}

/// Whether tests run under CI (`CI` set), where every test input must be present.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// For a test whose input is missing: under CI that is a failure (a skipped check must not
/// pass as a run one), so this panics with `why`; elsewhere it says the test is skipped and
/// how to provide the input.
pub fn skip_unless_ci(why: &str) {
    assert!(!under_ci(), "{why} (required under CI)");
    eprintln!("skipped: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (64-bit FNV-1a).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn writing_in_pieces_is_writing_the_whole() {
        let mut pieces = Fnv1a::new();
        pieces.write(b"foo").write(b"bar");
        assert_eq!(pieces.finish(), fnv1a(b"foobar"));
        assert_eq!(pieces.hex(), "85944171f73967e8");
    }
}
