//! `--chroot DIR`: the kernel's own toolchain in a root file system of its release.
//!
//! A distribution kernel is built by its release's compiler (Debian 13's kernels by gcc 14),
//! which this machine may not have. With a build root (made with `debootstrap` and holding
//! that release's gcc, binutils and the kernel's build dependencies), every compile and link
//! kpatch-rs starts runs inside it: the program enters a private mount namespace, the
//! directories the build reads and writes are bind-mounted into the root at their own paths
//! (the source tree read-only), and it `chroot`s there. As root that is all; another user
//! first enters a user namespace of their own, mapped to themselves, in which mounting and
//! chroot are allowed, so the programs still run as that user. Paths on the command line and in the
//! build directories mean the same inside and out, so a build directory prepared in the root is
//! used by the next run as is. The mounts live only as long as the program and its children;
//! the only trace in the root is the empty directories the mounts need.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The programs a build runs in the root; the check that it has them names what is missing.
pub const NEEDED: &[&str] = &["usr/bin/make", "usr/bin/gcc", "usr/bin/ld"];

/// A directory of the host seen at the same path in the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bind {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Why a build root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(
        "--chroot {0}: not a directory; make a root of the kernel's release first, for \
         example `debootstrap --variant=minbase --include=gcc,make,bc,bison,flex,libelf-dev,\
         libssl-dev,dwarves,kmod,xz-utils,perl,python3 trixie {0}`"
    )]
    NotADirectory(PathBuf),
    #[error(
        "--chroot {root}: it has no /{program}; install the kernel's build dependencies in it \
         (`chroot {root} apt-get install gcc make bc bison flex libelf-dev libssl-dev dwarves \
         python3`)"
    )]
    Missing { root: PathBuf, program: String },
    #[error(
        "--chroot {root}: cannot run a command in it ({error}); as a user that is not root \
         this needs unprivileged user namespaces (sysctl user.max_user_namespaces, \
         kernel.unprivileged_userns_clone where the kernel has it), else run kpatch-rs as root"
    )]
    CannotEnter { root: PathBuf, error: String },
    #[error(
        "--chroot {root}: cannot make the mount point {path}: {source}; have the root's \
         owner make it (`mkdir -p {path}`), or run kpatch-rs as root"
    )]
    MountPoint {
        root: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error("--chroot {0}: a path with a NUL byte")]
    Nul(PathBuf),
}

/// What the child does between fork and exec, prepared beforehand: it may only make system
/// calls there, not allocate.
#[derive(Debug)]
struct Entry {
    root: CString,
    /// (source, target inside the root, the flags a read-only remount keeps, or None to
    /// leave it writable), outer directories first.
    binds: Vec<(CString, CString, Option<libc::c_ulong>)>,
    slash: CString,
    /// For a user that is not root: the user namespace's id maps, the user and group mapped
    /// to themselves (files written in the cache stay theirs).
    user: Option<UserMaps>,
}

#[derive(Debug)]
struct UserMaps {
    setgroups: CString,
    uid_map: CString,
    gid_map: CString,
    deny: CString,
    uid_line: CString,
    gid_line: CString,
}

/// A root file system that compiles and links run in (see the module's documentation).
#[derive(Debug, Clone)]
pub struct BuildRoot {
    pub dir: PathBuf,
    entry: Arc<Entry>,
}

fn c_path(path: &Path) -> Result<CString, RootError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RootError::Nul(path.to_path_buf()))
}

impl BuildRoot {
    /// Checks `dir` and makes the mount points for `binds` in it (each bind's directory must
    /// exist on the host). The host's `/dev` and `/proc` are bound too.
    pub fn new(dir: &Path, binds: &[Bind]) -> Result<BuildRoot, RootError> {
        if !dir.is_dir() {
            return Err(RootError::NotADirectory(dir.to_path_buf()));
        }
        let dir = std::fs::canonicalize(dir).map_err(|_| RootError::NotADirectory(dir.into()))?;
        for program in NEEDED {
            if !dir.join(program).exists() {
                return Err(RootError::Missing {
                    root: dir.clone(),
                    program: program.to_string(),
                });
            }
        }
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let user = if uid == 0 {
            None
        } else {
            let c = |text: String| CString::new(text).map_err(|_| RootError::Nul(dir.clone()));
            Some(UserMaps {
                setgroups: c("/proc/self/setgroups".into())?,
                uid_map: c("/proc/self/uid_map".into())?,
                gid_map: c("/proc/self/gid_map".into())?,
                deny: c("deny".into())?,
                uid_line: c(format!("{uid} {uid} 1"))?,
                gid_line: c(format!("{gid} {gid} 1"))?,
            })
        };
        let mut all: Vec<Bind> = binds.to_vec();
        for system in ["/dev", "/proc"] {
            all.push(Bind {
                path: PathBuf::from(system),
                read_only: false,
            });
        }
        // Outer directories first, so that one inside another is mounted over it; a path
        // bound twice keeps its writable bind.
        all.sort_by(|a, b| {
            a.path
                .components()
                .count()
                .cmp(&b.path.components().count())
                .then(a.path.cmp(&b.path))
                .then(a.read_only.cmp(&b.read_only))
        });
        all.dedup_by(|later, earlier| later.path == earlier.path);
        let mut entry_binds = Vec::new();
        for bind in &all {
            let inside = dir.join(bind.path.strip_prefix("/").unwrap_or(&bind.path));
            std::fs::create_dir_all(&inside).map_err(|source| RootError::MountPoint {
                root: dir.clone(),
                path: inside.clone(),
                source,
            })?;
            let remount = bind.read_only.then(|| kept_flags(&bind.path));
            entry_binds.push((c_path(&bind.path)?, c_path(&inside)?, remount));
        }
        let entry = Entry {
            root: c_path(&dir)?,
            binds: entry_binds,
            slash: c_path(Path::new("/"))?,
            user,
        };
        Ok(BuildRoot {
            dir,
            entry: Arc::new(entry),
        })
    }

    /// Makes `command` run inside the root. Its working directory becomes `/`: every path
    /// kpatch-rs passes is absolute.
    pub fn enter(&self, command: &mut Command) {
        // Shells that make starts would otherwise find the host's working directory in PWD.
        command.env("PWD", "/");
        let entry = Arc::clone(&self.entry);
        // SAFETY: the closure only makes system calls on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || entry.enter());
        }
    }
}

/// The flags of the mount `path` is on that a remount of a bind of it must keep: in a user
/// namespace they are locked, and a remount without them fails.
fn kept_flags(path: &Path) -> libc::c_ulong {
    let Ok(name) = c_path(path) else {
        return 0;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is NUL-terminated; `stats` is read only when statvfs filled it.
    let flags = unsafe {
        if libc::statvfs(name.as_ptr(), stats.as_mut_ptr()) != 0 {
            return 0;
        }
        stats.assume_init().f_flag
    };
    [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ]
    .iter()
    .filter(|(st, _)| flags & st != 0)
    .fold(0, |all, (_, ms)| all | ms)
}

/// Writes `text` into the file `path` with system calls only.
///
/// # Safety
/// Both are NUL-terminated strings.
unsafe fn write_file(path: &CString, text: &CString) -> io::Result<()> {
    // SAFETY: the caller's strings; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        let bytes = text.as_bytes();
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize {
            return Err(error);
        }
    }
    Ok(())
}

/// The result of a libc call that returns -1 on failure.
fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Entry {
    /// In the child: a private mount namespace, the binds, then chroot.
    fn enter(&self) -> io::Result<()> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every pointer is a NUL-terminated string owned by `self` or null where the
        // call takes null; no memory is allocated.
        unsafe {
            match &self.user {
                None => check(libc::unshare(libc::CLONE_NEWNS))?,
                Some(maps) => {
                    // Mounting and chroot are then the user's own, in namespaces of theirs.
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    write_file(&maps.setgroups, &maps.deny)?;
                    write_file(&maps.uid_map, &maps.uid_line)?;
                    write_file(&maps.gid_map, &maps.gid_line)?;
                }
            }
            // Nothing mounted here may reach the host's namespace.
            check(libc::mount(
                null,
                self.slash.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (source, target, remount) in &self.binds {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if let Some(kept) = remount {
                    check(libc::mount(
                        null,
                        target.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::chroot(self.root.as_ptr()))?;
            check(libc::chdir(self.slash.as_ptr()))?;
        }
        Ok(())
    }
}

/// The root compiles and links run in, for this process's build: one build at a time per
/// process, as with the build's lock ([`super::kbuild::inherit_lock`]).
static ROOT: Mutex<Option<BuildRoot>> = Mutex::new(None);

/// While this lives, toolchain commands run in the root given to [`use_root`].
#[derive(Debug)]
pub struct RootInUse(());

/// Runs the build's toolchain commands in `root` (none: on the host) until the returned value
/// is dropped.
pub fn use_root(root: Option<BuildRoot>) -> RootInUse {
    *ROOT.lock().unwrap_or_else(|e| e.into_inner()) = root;
    RootInUse(())
}

impl Drop for RootInUse {
    fn drop(&mut self) {
        *ROOT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Makes `command` (a compile, link or one of the kernel's build tools) run in the build's
/// root, when there is one.
pub fn in_root(command: &mut Command) -> &mut Command {
    if let Some(root) = ROOT.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        root.enter(command);
    }
    command
}

/// The root toolchain commands run in now, if any.
pub fn current() -> Option<PathBuf> {
    ROOT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|root| root.dir.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_a_compiler_is_refused_with_what_to_install() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("usr/bin")).expect("mkdir");
        std::fs::write(dir.path().join("usr/bin/make"), "").expect("write");
        let error = BuildRoot::new(dir.path(), &[]).expect_err("no gcc");
        let text = error.to_string();
        assert!(text.contains("/usr/bin/gcc"), "{text}");
        assert!(text.contains("apt-get install gcc"), "{text}");
        let error = BuildRoot::new(&dir.path().join("none"), &[]).expect_err("no root");
        assert!(error.to_string().contains("debootstrap"), "{error}");
    }
}
