//! Trees: the original source tree, which is the user's and only ever read, and the patched
//! tree, a hard-linked copy of it with the patches applied.
//!
//! The patched tree lives in the build cache and is kept between runs. Before each run it is
//! brought back to the original by comparing inodes file by file (about a tenth of a second for
//! a kernel tree, against seconds for a fresh `cp -al`): a file whose inode differs from the
//! original's, because a patch or the user's editor replaced one side, is linked again, files the
//! original lacks are removed, and files it gained are linked in. `patch` writes each file it
//! changes as a new file, so applying a patch breaks exactly the links of the touched files,
//! and the original tree never sees a write.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::build::kbuild::CommandError;
use crate::build::patches::{self, PatchError};
use crate::build::{files, io_error, IoError};

/// Why the patched tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot mirror {} into {}: {source}", tree.display(), copy.display())]
    Mirror {
        tree: PathBuf,
        copy: PathBuf,
        #[source]
        source: IoError,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(
        "applying the patches changed {path} in place, which would also change the original \
         tree; kpatch-rs refuses to continue"
    )]
    WroteInPlace { path: String },
}

/// What one sync of the patched tree did, for the report and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Files linked again (or for the first time).
    pub linked: usize,
    /// Files copied, where the cache cannot hard-link the source's files.
    pub copied: usize,
    /// Files and directories removed because the original lacks them.
    pub removed: usize,
}

/// Makes `copy` a hard-linked mirror of `source`, or a copied one where hard links cannot
/// be made: the source on another file system than the cache (or a read-only mount of it),
/// or files the user may read but not link (`fs.protected_hardlinks`). A copy keeps the
/// original's modification time and is written under a temporary name first, so that the
/// next sync can tell a complete, current copy by its size and time.
pub fn sync_linked_tree(source: &Path, copy: &Path) -> Result<SyncStats, TreeError> {
    sync_tree(source, copy, true)
}

fn sync_tree(source: &Path, copy: &Path, try_links: bool) -> Result<SyncStats, TreeError> {
    let mut state = SyncState {
        stats: SyncStats::default(),
        links: try_links,
    };
    sync_directory(source, copy, &mut state).map_err(|e| TreeError::Mirror {
        tree: source.to_path_buf(),
        copy: copy.to_path_buf(),
        source: e,
    })?;
    Ok(state.stats)
}

struct SyncState {
    stats: SyncStats,
    /// Whether hard links still work; the first that fails for want of a shared file
    /// system or of permission turns the rest of the sync into copies.
    links: bool,
}

fn sync_directory(source: &Path, copy: &Path, state: &mut SyncState) -> Result<(), IoError> {
    match fs::symlink_metadata(copy) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            fs::remove_file(copy).map_err(io_error("remove", copy))?;
            fs::create_dir(copy).map_err(io_error("create", copy))?;
        }
        Err(_) => fs::create_dir_all(copy).map_err(io_error("create", copy))?,
    }
    let mut wanted = std::collections::HashSet::new();
    for entry in fs::read_dir(source).map_err(io_error("list", source))? {
        let entry = entry.map_err(io_error("list", source))?;
        let name = entry.file_name();
        let from = entry.path();
        let to = copy.join(&name);
        wanted.insert(name);
        let kind = entry.file_type().map_err(io_error("stat", &from))?;
        if kind.is_dir() {
            sync_directory(&from, &to, state)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(io_error("read the link", &from))?;
            let current = fs::read_link(&to).ok();
            if current.as_ref() != Some(&target) {
                remove_any(&to)?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(io_error("create the link", &to))?;
                state.stats.linked += 1;
            }
        } else {
            let meta = entry.metadata().map_err(io_error("stat", &from))?;
            let modified = meta.modified().map_err(io_error("stat", &from))?;
            let current = fs::symlink_metadata(&to).ok().filter(|m| m.is_file());
            let same = current.is_some_and(|copied| {
                copied.ino() == meta.ino()
                    || (copied.nlink() == 1
                        && copied.len() == meta.len()
                        && copied.modified().ok() == Some(modified))
            });
            if same {
                continue;
            }
            remove_any(&to)?;
            if state.links {
                match fs::hard_link(&from, &to) {
                    Ok(()) => {
                        state.stats.linked += 1;
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::CrossesDevices | io::ErrorKind::PermissionDenied
                        ) =>
                    {
                        state.links = false;
                    }
                    Err(e) => return Err(io_error("hard-link", &to)(e)),
                }
            }
            files::copy_atomically(&from, &to, modified)?;
            state.stats.copied += 1;
        }
    }
    for entry in fs::read_dir(copy).map_err(io_error("list", copy))? {
        let entry = entry.map_err(io_error("list", copy))?;
        if !wanted.contains(&entry.file_name()) {
            remove_any(&entry.path())?;
            state.stats.removed += 1;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), IoError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(io_error("remove", path))
}

/// Brings `copy` back to `source`, applies `patches` in order, and checks that every file the
/// patches touched (`touched`, relative to the tree root) was written as a new file.
pub fn patch_tree(
    source: &Path,
    copy: &Path,
    patches: &[PathBuf],
    touched: &[PathBuf],
    log: &Path,
) -> Result<SyncStats, TreeError> {
    let stats = sync_linked_tree(source, copy)?;
    for patch in patches {
        patches::apply(copy, patch, log)?;
    }
    for path in touched {
        let original = fs::metadata(source.join(path)).map(|meta| meta.ino());
        let patched = fs::metadata(copy.join(path)).map(|meta| meta.ino());
        if let (Ok(original), Ok(patched)) = (original, patched) {
            if original == patched {
                return Err(TreeError::WroteInPlace {
                    path: path.display().to_string(),
                });
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, text).expect("write");
    }

    #[test]
    fn patching_the_copy_leaves_the_original_alone_and_resyncs_cheaply() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source");
        let copy = dir.path().join("copy");
        write(&source.join("fs/proc/cmdline.c"), "int a = 1;\n");
        write(&source.join("fs/proc/meminfo.c"), "int b = 2;\n");
        write(&source.join("include/x.h"), "#define X 1\n");
        let patch = dir.path().join("fix.patch");
        write(
            &patch,
            "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-int a = 1;\n+int a = 42;\n",
        );
        let log = dir.path().join("log");
        let touched = vec![PathBuf::from("fs/proc/cmdline.c")];

        let stats = patch_tree(&source, &copy, std::slice::from_ref(&patch), &touched, &log)
            .expect("patch");
        assert_eq!(stats.linked, 3);
        assert_eq!(
            fs::read_to_string(copy.join("fs/proc/cmdline.c")).expect("read"),
            "int a = 42;\n"
        );
        assert_eq!(
            fs::read_to_string(source.join("fs/proc/cmdline.c")).expect("read"),
            "int a = 1;\n",
            "the original tree must not change"
        );

        // The next run relinks only what the last patch replaced, and sees the user's edits.
        write(&source.join("include/new.h"), "#define NEW 1\n");
        fs::remove_file(source.join("include/x.h")).expect("rm");
        let stats = sync_linked_tree(&source, &copy).expect("sync");
        assert_eq!(
            stats,
            SyncStats {
                linked: 2,
                copied: 0,
                removed: 1
            }
        );
        assert_eq!(
            fs::read_to_string(copy.join("fs/proc/cmdline.c")).expect("read"),
            "int a = 1;\n"
        );
        assert!(copy.join("include/new.h").exists());
        assert!(!copy.join("include/x.h").exists());
        assert_eq!(
            sync_linked_tree(&source, &copy).expect("sync"),
            SyncStats::default()
        );
    }

    #[test]
    fn a_patch_that_does_not_apply_names_itself_and_leaves_the_copy_clean() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source");
        let copy = dir.path().join("copy");
        write(&source.join("a.c"), "int a = 1;\n");
        let patch = dir.path().join("stale.patch");
        write(
            &patch,
            "--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a = 7;\n+int a = 8;\n",
        );
        let log = dir.path().join("log");
        let error = patch_tree(&source, &copy, std::slice::from_ref(&patch), &[], &log)
            .expect_err("must fail");
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "patch {} does not apply to a.c: hunk #1 at line 1 FAILED; the source tree is \
                 not the one the patch was made for: make the patch against the running \
                 kernel's source",
                patch.display()
            )
        );
        assert_eq!(
            fs::read_to_string(copy.join("a.c")).expect("read"),
            "int a = 1;\n"
        );
    }

    #[test]
    fn where_links_cannot_be_made_the_tree_is_copied_and_resynced_by_size_and_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source");
        let copy = dir.path().join("copy");
        write(&source.join("fs/a.c"), "int a = 1;\n");
        write(&source.join("include/b.h"), "#define B 1\n");
        let stats = sync_tree(&source, &copy, false).expect("copy");
        assert_eq!((stats.linked, stats.copied), (0, 2));
        let copied = fs::metadata(copy.join("fs/a.c")).expect("stat");
        assert_ne!(
            copied.ino(),
            fs::metadata(source.join("fs/a.c")).expect("stat").ino()
        );
        assert_eq!(
            sync_tree(&source, &copy, false).expect("sync"),
            SyncStats::default()
        );
        // What patch writes is a new file of another time: copied again from the original.
        fs::remove_file(copy.join("fs/a.c")).expect("rm");
        write(&copy.join("fs/a.c"), "int a = 42;\n");
        // A copy killed before its rename leaves a temporary file, which is removed.
        write(&copy.join("fs/.a.c.kpatch-rs-partial-1"), "int a");
        let stats = sync_tree(&source, &copy, false).expect("sync");
        assert_eq!((stats.copied, stats.removed), (1, 1));
        assert_eq!(
            fs::read_to_string(copy.join("fs/a.c")).expect("read"),
            "int a = 1;\n"
        );
    }
}
