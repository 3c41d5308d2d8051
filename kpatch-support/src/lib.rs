//! What every crate of the workspace, its tests and xtask would otherwise write for itself:
//! the hash that names cache entries, where the caches live, and the rule for a test whose
//! input (a built kernel, kernel fixtures) is missing. No dependencies, so that any crate can
//! use it, the `no_std` core's tests included.

use std::path::{Path, PathBuf};

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

/// A fingerprint of the tree at `root` that any write to it changes: every entry's path,
/// type, size, permissions, inode and modification time (not its change time, which a hard
/// link to a file moves without writing it), symlink targets, and the contents of the files
/// in `read` (paths relative to `root`). Returns the number of entries and the hash; the
/// fault tests take it before and after, to show that the user's tree was never written.
pub fn tree_fingerprint(root: &Path, read: &[&str]) -> std::io::Result<(usize, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut hash = Fnv1a::new();
    let mut count = 0;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&relative))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for name in entries {
            let path = relative.join(&name);
            let meta = std::fs::symlink_metadata(root.join(&path))?;
            count += 1;
            hash.write(path.as_os_str().as_encoded_bytes()).write(&[0]);
            for value in [
                meta.mode().into(),
                meta.len(),
                meta.ino(),
                meta.mtime() as u64,
                meta.mtime_nsec() as u64,
            ] {
                hash.write(&value.to_le_bytes());
            }
            if meta.is_symlink() {
                let target = std::fs::read_link(root.join(&path))?;
                hash.write(target.as_os_str().as_encoded_bytes());
            } else if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    for file in read {
        hash.write(&std::fs::read(root.join(file))?).write(&[0]);
    }
    Ok((count, hash.finish()))
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
    fn a_tree_fingerprint_sees_writes_and_not_hard_links() {
        let dir = std::env::temp_dir().join(format!("kpatch-support-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/fs")).expect("mkdir");
        std::fs::write(dir.join("tree/fs/a.c"), "a").expect("write");
        let before = tree_fingerprint(&dir.join("tree"), &["fs/a.c"]).expect("fingerprint");
        assert_eq!(before.0, 2);
        std::fs::hard_link(dir.join("tree/fs/a.c"), dir.join("link.c")).expect("link");
        let linked = tree_fingerprint(&dir.join("tree"), &["fs/a.c"]).expect("fingerprint");
        std::fs::write(dir.join("tree/fs/a.c"), "b").expect("write");
        let written = tree_fingerprint(&dir.join("tree"), &["fs/a.c"]).expect("fingerprint");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(before, linked);
        assert_ne!(before, written);
    }

    #[test]
    fn writing_in_pieces_is_writing_the_whole() {
        let mut pieces = Fnv1a::new();
        pieces.write(b"foo").write(b"bar");
        assert_eq!(pieces.finish(), fnv1a(b"foobar"));
        assert_eq!(pieces.hex(), "85944171f73967e8");
    }
}
