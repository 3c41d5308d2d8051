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
use std::os::unix::ffi::OsStringExt;
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

/// Makes `copy` a copied mirror of `source`, never linked: for a tree Kbuild builds in
/// (an out-of-tree module's `M=` directory), whose files it may rewrite in place.
pub fn sync_copied_tree(source: &Path, copy: &Path) -> Result<SyncStats, TreeError> {
    sync_tree(source, copy, false)
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

/// Makes `to` a copy of the prepared Kbuild output directory `from`, so that a second build
/// directory need not run `olddefconfig` and `modules_prepare` again.
///
/// Only what existed when `from` was prepared is copied: files modified after `cutoff` (its
/// completion stamp's time) are objects of later builds, which the copy must not inherit;
/// anything the copy lacks, Kbuild remakes. Each file keeps its permissions and modification
/// time, which is what make compares. Kbuild's records name the source tree and the output
/// directory by absolute path (the `.cmd` files' command lines and dependencies, the `.d`
/// files, the generated `Makefile`, the `source` link), so in those each `(old, new)` of
/// `renames` is rewritten: a command line that is the one the copy's own build would run
/// leaves its target alone, where an unchanged record would make Kbuild rebuild the target
/// (or, worse, keep it while watching the original tree's files). Other files (host
/// programs, objtool) are left as they are: the paths in them are debug information.
///
/// Regular files are copied, never linked: Kbuild rewrites some files in place (the
/// generated `Makefile`), which through a link would write into `from`. The copy is made
/// under a temporary name and renamed to `to` when whole, so a kill leaves no half-made copy
/// under the real name.
pub fn copy_prepared_build(
    from: &Path,
    to: &Path,
    renames: &[(PathBuf, PathBuf)],
    cutoff: std::time::SystemTime,
) -> Result<usize, IoError> {
    let mut renames: Vec<(Vec<u8>, Vec<u8>)> = renames
        .iter()
        .map(|(old, new)| {
            (
                old.as_os_str().as_encoded_bytes().to_vec(),
                new.as_os_str().as_encoded_bytes().to_vec(),
            )
        })
        .collect();
    // The longest first, so that a directory inside another is rewritten as itself.
    renames.sort_by_key(|rename| std::cmp::Reverse(rename.0.len()));
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = to.with_file_name(format!(".{name}.kpatch-rs-copying"));
    remove_any(&partial)?;
    let mut copied = 0;
    copy_prepared_directory(from, &partial, from, &renames, cutoff, &mut copied)?;
    remove_any(to)?;
    fs::rename(&partial, to).map_err(io_error("rename into", to))?;
    Ok(copied)
}

fn copy_prepared_directory(
    from: &Path,
    to: &Path,
    root: &Path,
    renames: &[(Vec<u8>, Vec<u8>)],
    cutoff: std::time::SystemTime,
    copied: &mut usize,
) -> Result<(), IoError> {
    fs::create_dir_all(to).map_err(io_error("create", to))?;
    for entry in fs::read_dir(from).map_err(io_error("list", from))? {
        let entry = entry.map_err(io_error("list", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io_error("stat", &source))?;
        if kind.is_dir() {
            copy_prepared_directory(&source, &target, root, renames, cutoff, copied)?;
            continue;
        }
        if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(io_error("read the link", &source))?;
            let link = rewrite_paths(link.as_os_str().as_encoded_bytes(), renames);
            let link = PathBuf::from(std::ffi::OsString::from_vec(link));
            std::os::unix::fs::symlink(&link, &target)
                .map_err(io_error("create the link", &target))?;
            continue;
        }
        let meta = entry.metadata().map_err(io_error("stat", &source))?;
        let modified = meta.modified().map_err(io_error("stat", &source))?;
        if modified > cutoff {
            continue;
        }
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let records_paths = file_name.ends_with(".cmd")
            || file_name.ends_with(".d")
            || (file_name == "Makefile" && from == root);
        if records_paths {
            let text = fs::read(&source).map_err(io_error("read", &source))?;
            fs::write(&target, rewrite_paths(&text, renames))
                .map_err(io_error("write", &target))?;
            fs::set_permissions(&target, meta.permissions())
                .map_err(io_error("set the permissions of", &target))?;
        } else {
            fs::copy(&source, &target).map_err(io_error("copy", &source))?;
        }
        fs::File::options()
            .write(true)
            .open(&target)
            .and_then(|file| file.set_modified(modified))
            .map_err(io_error("set the time of", &target))?;
        *copied += 1;
    }
    Ok(())
}

/// `text` with every whole-path occurrence of each `old` replaced by its `new`: an `old`
/// followed by a character that could continue a file name (`/source2`, `original.log`) is
/// another path and is left alone; `renames` is longest first.
fn rewrite_paths(text: &[u8], renames: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let continues_name = |byte: u8| byte.is_ascii_alphanumeric() || b"._-+~".contains(&byte);
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    'scan: while at < text.len() {
        for (old, new) in renames {
            if !old.is_empty()
                && text[at..].starts_with(old)
                && text
                    .get(at + old.len())
                    .is_none_or(|&next| !continues_name(next))
            {
                out.extend_from_slice(new);
                at += old.len();
                continue 'scan;
            }
        }
        out.push(text[at]);
        at += 1;
    }
    out
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
    #[test]
    fn only_whole_paths_are_rewritten_the_longest_first() {
        let renames = vec![
            (b"/c/original".to_vec(), b"/c/patched".to_vec()),
            (b"/src".to_vec(), b"/c/patched-source".to_vec()),
            (b"/src/inner".to_vec(), b"/elsewhere".to_vec()),
        ];
        let mut sorted = renames.clone();
        sorted.sort_by_key(|rename| std::cmp::Reverse(rename.0.len()));
        let text = b"gcc -I/src/include -o /c/original/x.o /src2/a.c /c/original.log \"/src\" /src/inner/b.h /src";
        assert_eq!(
            String::from_utf8(rewrite_paths(text, &sorted)).expect("utf-8"),
            "gcc -I/c/patched-source/include -o /c/patched/x.o /src2/a.c /c/original.log \
             \"/c/patched-source\" /elsewhere/b.h /c/patched-source"
        );
    }

    #[test]
    fn a_prepared_build_is_copied_as_prepared_with_its_paths_and_times() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source");
        let patched_source = dir.path().join("patched-source");
        let from = dir.path().join("original");
        let to = dir.path().join("patched");
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let stamp_time = old + Duration::from_secs(60);
        let later = stamp_time + Duration::from_secs(60);
        let at = |path: &Path, time: SystemTime| {
            fs::File::options()
                .write(true)
                .open(path)
                .and_then(|file| file.set_modified(time))
                .expect("set time");
        };
        let cmd = format!(
            "cmd_kernel/bounds.s := gcc -I{s}/include -o kernel/bounds.s {s}/kernel/bounds.c\n\
             deps_kernel/bounds.s := {s}/include/linux/page.h {o}/include/generated/x.h\n",
            s = source.display(),
            o = from.display()
        );
        write(&from.join("kernel/.bounds.s.cmd"), &cmd);
        at(&from.join("kernel/.bounds.s.cmd"), old);
        write(
            &from.join("Makefile"),
            &format!("include {}/Makefile\n", source.display()),
        );
        at(&from.join("Makefile"), old);
        // A host program: its bytes are not records and stay as they are.
        let program = from.join("scripts/basic/fixdep");
        fs::create_dir_all(program.parent().expect("parent")).expect("mkdir");
        fs::write(&program, format!("\0ELF {}", source.display())).expect("write");
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("chmod");
        at(&program, old);
        write(&from.join(".kpatch-prepared"), "CONFIG_X=y\n");
        at(&from.join(".kpatch-prepared"), stamp_time);
        // An object of a later build: not part of the preparation.
        write(&from.join("fs/proc/cmdline.o"), "object");
        at(&from.join("fs/proc/cmdline.o"), later);
        std::os::unix::fs::symlink(&source, from.join("source")).expect("symlink");
        // What a killed copy or an earlier preparation left is replaced.
        write(&to.join("stale"), "old");
        write(&dir.path().join(".patched.kpatch-rs-copying/half"), "half");

        let renames = vec![
            (source.clone(), patched_source.clone()),
            (from.clone(), to.clone()),
        ];
        let copied = copy_prepared_build(&from, &to, &renames, stamp_time).expect("copy");
        assert_eq!(copied, 4);
        assert_eq!(
            fs::read_to_string(to.join("kernel/.bounds.s.cmd")).expect("read"),
            cmd.replace(
                &source.display().to_string(),
                &patched_source.display().to_string()
            )
            .replace(&from.display().to_string(), &to.display().to_string())
        );
        assert_eq!(
            fs::read_to_string(to.join("Makefile")).expect("read"),
            format!("include {}/Makefile\n", patched_source.display())
        );
        assert_eq!(
            fs::read(to.join("scripts/basic/fixdep")).expect("read"),
            fs::read(&program).expect("read")
        );
        let meta = fs::metadata(to.join("scripts/basic/fixdep")).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.modified().expect("mtime"), old);
        assert_eq!(
            fs::metadata(to.join("kernel/.bounds.s.cmd"))
                .and_then(|m| m.modified())
                .expect("mtime"),
            old
        );
        assert_ne!(
            meta.ino(),
            fs::metadata(&program).expect("stat").ino(),
            "copied, never linked"
        );
        assert_eq!(
            fs::read_link(to.join("source")).expect("link"),
            patched_source
        );
        assert!(to.join(".kpatch-prepared").is_file());
        assert!(!to.join("fs/proc/cmdline.o").exists());
        assert!(!to.join("stale").exists());
        assert!(!dir.path().join(".patched.kpatch-rs-copying").exists());
    }
}
