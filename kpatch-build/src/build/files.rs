//! File writes that a fault cannot leave half done: a file that others trust (the module in
//! the output directory, a copy in the patched tree) is written under a temporary name in its
//! own directory and renamed into place, so a build killed, or stopped by a full file system,
//! leaves either the old file, the new one, or no file, never a partial one under the real
//! name; and the hint an I/O error gets when the file system is full.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{io_error, IoError};

/// What a full file system (or quota) adds to the message of the error it caused.
pub fn storage_full_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; the file system is full: free space on it, or pass --cache-dir (the build \
             cache) or -o (the module) on another file system"
        }
        _ => "",
    }
}

/// The marker of kpatch-rs's temporary files: `.NAME.kpatch-rs-partial-PID`.
const PARTIAL: &str = ".kpatch-rs-partial-";

/// The temporary name `path` is written under before it is renamed into place.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{PARTIAL}{}", std::process::id()))
}

/// Writes `bytes` to `path` all or nothing: to a temporary file beside it, flushed to disk,
/// then renamed over `path`. On failure the temporary file is removed and `path` is as it
/// was. Temporary files of `path` that earlier, killed runs left are removed first (those of
/// a process still running are its own, and are left alone).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    remove_stale_partials(path);
    let partial = partial_path(path);
    let written = fs::File::create(&partial)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io_error("write", &partial))
        .and_then(|()| fs::rename(&partial, path).map_err(io_error("rename into", path)));
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written
}

/// Removes the temporary files of `path` whose process is gone.
fn remove_stale_partials(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}{PARTIAL}", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(pid) = entry_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let alive = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Copies the regular file `from` to `to` all or nothing, with `from`'s permissions and
/// modification time (which tells the next sync that the copy is current).
pub fn copy_atomically(
    from: &Path,
    to: &Path,
    modified: std::time::SystemTime,
) -> Result<(), IoError> {
    let partial = partial_path(to);
    let copied = fs::copy(from, &partial)
        .and_then(|_| fs::File::options().write(true).open(&partial))
        .and_then(|file| file.set_modified(modified))
        .map_err(io_error("copy into", to))
        .and_then(|()| fs::rename(&partial, to).map_err(io_error("rename into", to)));
    if copied.is_err() {
        let _ = fs::remove_file(&partial);
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_clears_what_killed_runs_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let module = dir.path().join("livepatch-x.ko");
        // A process that no longer exists (pid 0 is never a user process's) left a partial
        // file; a file of another name stays.
        let stale = dir.path().join(format!(".livepatch-x.ko{PARTIAL}0"));
        fs::write(&stale, "half").expect("write");
        let other = dir.path().join(format!(".livepatch-y.ko{PARTIAL}0"));
        fs::write(&other, "other").expect("write");
        write_atomically(&module, b"first").expect("write");
        write_atomically(&module, b"second").expect("write");
        assert_eq!(fs::read(&module).expect("read"), b"second");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                other.file_name().expect("name").to_string_lossy(),
                "livepatch-x.ko".into()
            ]
        );
    }

    #[test]
    fn a_failed_write_leaves_nothing_under_either_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The target is a directory: the rename fails after the temporary file was written.
        let target = dir.path().join("busy.ko");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("inside"), "x").expect("write");
        let error = write_atomically(&target, b"module").expect_err("rename over a directory");
        assert!(
            error.to_string().starts_with("cannot rename into "),
            "{error}"
        );
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").flatten().collect();
        assert_eq!(names.len(), 1, "only the directory is left: {names:?}");
    }

    #[test]
    fn a_full_file_system_says_what_to_do() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(storage_full_hint(&full).contains("free space"));
        assert_eq!(
            storage_full_hint(&io::Error::from(io::ErrorKind::NotFound)),
            ""
        );
    }
}
