//! What a pipeline files with a build, whatever its outcome: the schema and tool versions, the
//! kernel release and the module's vermagic, and the SHA-256 digest of every input and of the
//! module. Digests of large inputs (a debug vmlinux is half a gigabyte) are kept in the cache,
//! keyed by the file's path, size, inode and change times, so that a second build against the
//! same kernel does not read it again.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{BuildOptions, SymbolSource};

/// The version of the `--json` documents' layout; raised when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

/// The tool and the versions a document is written by.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provenance {
    pub schema_version: u32,
    /// `kpatch-rs 0.1.0 (commit …)`, as `--version` prints it.
    pub tool: String,
    /// The release the module is built for (`uname -r` of the kernel that will load it).
    pub kernel_release: Option<String>,
    /// The module's vermagic, as the kernel compares it at load time.
    pub vermagic: Option<String>,
    pub inputs: Vec<FileDigest>,
    /// The module written, when one was.
    pub output: Option<FileDigest>,
}

/// One file and its digest; `sha256` is None when the file could not be read (the error
/// says why).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileDigest {
    /// `patch`, `config`, `vmlinux`, `system-map`, `symvers`, `signing-cert`, `module`.
    pub role: &'static str,
    pub path: PathBuf,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
}

/// The provenance of a build with `options`; `module` is the file written, if any.
pub fn describe(options: &BuildOptions, tool: &str, module: Option<&Path>) -> Provenance {
    let cache = options.cache.join("digests");
    let mut inputs: Vec<FileDigest> = options
        .patches
        .iter()
        .map(|patch| digest("patch", patch, &cache))
        .collect();
    inputs.push(digest("config", &options.config, &cache));
    inputs.push(match &options.symbols {
        SymbolSource::Vmlinux(path) => digest("vmlinux", path, &cache),
        SymbolSource::SystemMap(path) => digest("system-map", path, &cache),
    });
    inputs.push(digest("symvers", &options.symvers, &cache));
    if let Some(module) = &options.oot_module {
        inputs.push(digest("oot-module", &module.ko, &cache));
    }
    if let Some(key) = &options.signing_key {
        inputs.push(digest("signing-cert", &key.cert, &cache));
    }
    let output = module.map(|path| digest("module", path, &cache));
    let vermagic = module.and_then(module_vermagic);
    // The release is the vermagic's first word; before a module exists, the one the inputs
    // name (`--kernel-release`, or the headers' `kernel.release`).
    let kernel_release = vermagic
        .as_deref()
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string)
        .or_else(|| super::inputs::kernel_release(options).ok().flatten());
    Provenance {
        schema_version: SCHEMA_VERSION,
        tool: tool.to_string(),
        kernel_release,
        vermagic,
        inputs,
        output,
    }
}

/// The `vermagic=` of a module's `.modinfo`.
pub fn module_vermagic(module: &Path) -> Option<String> {
    use object::{Object, ObjectSection};
    let data = fs::read(module).ok()?;
    let file = object::File::parse(data.as_slice()).ok()?;
    let modinfo = file.section_by_name(".modinfo")?.data().ok()?;
    modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"vermagic="))
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
}

fn digest(role: &'static str, path: &Path, cache: &Path) -> FileDigest {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let metadata = fs::metadata(&path).ok();
    FileDigest {
        role,
        bytes: metadata.as_ref().map(|m| m.len()),
        sha256: metadata.and_then(|m| cached_sha256(&path, &m, cache)),
        path,
    }
}

/// Files smaller than this are hashed every time: reading them costs less than the cache.
const CACHED_FROM: u64 = 16 << 20;

fn cached_sha256(path: &Path, metadata: &fs::Metadata, cache: &Path) -> Option<String> {
    if metadata.len() < CACHED_FROM {
        return sha256_of(path);
    }
    let mut key = kpatch_support::Fnv1a::new();
    key.write(path.as_os_str().as_encoded_bytes());
    for number in [
        metadata.len(),
        metadata.ino(),
        metadata.dev(),
        metadata.mtime() as u64,
        metadata.mtime_nsec() as u64,
        metadata.ctime() as u64,
        metadata.ctime_nsec() as u64,
    ] {
        key.write(&number.to_le_bytes());
    }
    let entry = cache.join(key.hex());
    if let Ok(text) = fs::read_to_string(&entry) {
        let text = text.trim();
        if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(text.to_string());
        }
    }
    let sha256 = sha256_of(path)?;
    // Written whole under a temporary name and renamed: builds run side by side.
    if fs::create_dir_all(cache).is_ok() {
        let temporary = cache.join(format!(".{}.{}", key.hex(), std::process::id()));
        if fs::write(&temporary, &sha256).is_ok() && fs::rename(&temporary, &entry).is_err() {
            let _ = fs::remove_file(&temporary);
        }
    }
    Some(sha256)
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).ok()?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_text_and_the_cache_serves_large_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = dir.path().join("abc");
        fs::write(&small, "abc").expect("write");
        let cache = dir.path().join("digests");
        assert_eq!(
            digest("patch", &small, &cache).sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(!cache.exists(), "small files are not cached");

        let large = dir.path().join("vmlinux");
        fs::write(&large, vec![7u8; CACHED_FROM as usize]).expect("write");
        let first = digest("vmlinux", &large, &cache);
        assert_eq!(fs::read_dir(&cache).expect("cache").count(), 1);
        // A wrong cached value would be served: proof the cache, not the file, answered.
        let entry = fs::read_dir(&cache)
            .expect("cache")
            .flatten()
            .next()
            .expect("entry");
        fs::write(entry.path(), "0".repeat(64)).expect("overwrite");
        assert_eq!(
            digest("vmlinux", &large, &cache).sha256,
            Some("0".repeat(64))
        );
        // A changed file has a new key.
        fs::write(&large, vec![8u8; CACHED_FROM as usize]).expect("rewrite");
        let changed = digest("vmlinux", &large, &cache);
        assert_ne!(changed.sha256, first.sha256);
        assert_ne!(changed.sha256, Some("0".repeat(64)));
        let missing = digest("config", &dir.path().join("nope"), &cache);
        assert_eq!((missing.bytes, missing.sha256), (None, None));
    }
}
