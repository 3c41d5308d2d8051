//! Kbuild: the one place where kpatch-rs runs other programs (make, patch, cp, ld, sign-file).
//! The toolchain's commands (make, ld, sign-file, the compiler's version) run in the build's
//! root when `--chroot` gives one (`build_root.rs`); `patch` runs on the host.
//!
//! Every command's output goes to a log file under the build cache, and a failure carries
//! the command line and the log's tail, so the user sees why without digging. Nothing here
//! writes into the user's source tree: builds go to `O=` directories, and the patched tree is
//! a hard-linked copy that `patch` breaks file by file as it writes.

#![allow(
    clippy::disallowed_methods,
    reason = "this module is the one place kpatch-rs runs programs"
)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::build_root::{in_root, BuildRoot, RootError};

/// The code-generation flags every compared object is built with: one section per function
/// and per data object, so the diff can take or leave each one alone.
pub const DIFF_KCFLAGS: &str = "-ffunction-sections -fdata-sections";

/// The make variable that runs objtool on each object (see [`KernelBuild::build_objects`]).
const OBJTOOL_PER_OBJECT: &str = "objtool-enabled=y";

/// What the makefile [`OBJTOOL_ORDER_MK`] says when it is read by a make that only starts
/// Kbuild's final one (`srctree` is set only in that one), where its order would be lost.
const OBJTOOL_ORDER_UNREACHED: &str = "kpatch-rs: objtool order not in Kbuild's final make";

/// Read after Kbuild's top Makefile by the preparation ([`KernelBuild::prepare`]): objtool
/// before `prepare0`, whose `scripts/mod` runs it on `empty.o`.
const OBJTOOL_ORDER_MK: &str =
    "# kpatch-rs: objtool before prepare0, whose scripts/mod/empty.o it runs on.
ifeq ($(srctree),)
$(error kpatch-rs: objtool order not in Kbuild's final make)
endif
prepare0: tools/objtool
";

/// Targets of Kbuild's `prepare` whose programs nothing kpatch-rs runs in a prepared build
/// directory uses, so that preparing and single-object builds assume them made (make's `-o`):
/// - `tools/bpf/resolve_btfids` and its libbpf, which `prepare` wants with
///   `CONFIG_DEBUG_INFO_BTF` (Debian's config: about 10 s of CPU), run only by the link of
///   vmlinux and, for a module, by its BTF step (`scripts/Makefile.modfinal`), which Kbuild
///   skips when the build directory has no vmlinux;
/// - `archscripts`, on x86 the host program `arch/x86/tools/relocs`, run only on vmlinux and
///   the real-mode blob linked into it.
///
/// Only [`KernelBuild::build_all`] links a vmlinux, and it is not given this list, so it
/// makes them first.
const UNUSED_TOOLS: &[&str] = &["tools/bpf/resolve_btfids", "archscripts"];

/// A command that could not run or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} failed: `{command}`{tail}")]
pub struct CommandError {
    /// What kpatch-rs was doing, such as `building original objects`.
    pub what: String,
    /// The command line.
    pub command: String,
    /// The end of the command's output, with a pointer to the full log.
    pub tail: String,
}

/// The first line of `gcc --version`: the compiler that builds the patch, part of the cache key.
/// `compiler` is make's `$(CC)`, split into words as make splits it, so a wrapper runs with
/// the compiler it wraps (`ccache gcc --version` prints gcc's version, as does `sccache gcc`).
pub fn compiler_version(compiler: &str) -> Result<String, CommandError> {
    let mut words = compiler.split_whitespace();
    let Some(program) = words.next() else {
        return Err(CommandError {
            what: "asking the compiler for its version".to_string(),
            command: compiler.to_string(),
            tail: ": CC is empty".to_string(),
        });
    };
    let version = run_captured(
        &format!("asking {compiler} for its version"),
        in_root(Command::new(program).args(words).arg("--version")),
    )?;
    Ok(version.lines().next().unwrap_or("").to_string())
}

/// Whether commands can run in `root`: its `make --version`, run there.
pub fn check_root(root: &BuildRoot) -> Result<(), RootError> {
    let mut command = Command::new("make");
    command.arg("--version");
    root.enter(&mut command);
    run_captured("running make in the build root", &mut command)
        .map(drop)
        .map_err(|error| RootError::CannotEnter {
            root: root.dir.clone(),
            error: error.tail.trim_start_matches(": ").trim().to_string(),
        })
}

/// The first line of `ld --version`, in the build's root when there is one.
pub fn linker_version() -> Result<String, CommandError> {
    let version = run_captured(
        "asking ld for its version",
        in_root(Command::new("ld").arg("--version")),
    )?;
    Ok(version.lines().next().unwrap_or("").to_string())
}

/// Every program kpatch-rs runs gets, as its standard input, the build's lock file: a
/// program that reads it finds it empty, and every process the build starts, down to the
/// compilers make runs, holds the lock as long as it lives. So a build killed with SIGKILL,
/// whose make goes on without it, still holds its cache entry until that make is done, and
/// the next build waits for it instead of building beside it in the same directories.
static CHILD_STDIN: Mutex<Option<File>> = Mutex::new(None);

/// While this lives, programs started here inherit the build's lock ([`CHILD_STDIN`]).
#[derive(Debug)]
pub struct InheritedLock(());

/// Hands `lock` (the locked file) to every program started until the returned value is
/// dropped. One build at a time per process.
pub fn inherit_lock(lock: &File) -> std::io::Result<InheritedLock> {
    let clone = lock.try_clone()?;
    *CHILD_STDIN.lock().unwrap_or_else(|e| e.into_inner()) = Some(clone);
    Ok(InheritedLock(()))
}

impl Drop for InheritedLock {
    fn drop(&mut self) {
        *CHILD_STDIN.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The standard input of a program: the build's lock when one is held, else nothing.
fn child_stdin() -> Stdio {
    CHILD_STDIN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|file| file.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// Runs `command`, appending its output to `log`; `what` describes the step for the error.
pub fn run_logged(what: &str, command: &mut Command, log: &Path) -> Result<(), CommandError> {
    match run_logged_output(what, command, log)? {
        (_, None) => Ok(()),
        (_, Some(error)) => Err(error),
    }
}

/// The bytes an unprivileged writer may still use on the file system of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is a NUL-terminated path and `stats` is written by statvfs before it
    // is read, only when it returns 0.
    let stats = unsafe {
        if libc::statvfs(name.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Runs `command` with its output appended to `log`, and returns what it wrote there and,
/// when it failed, the error; Err only when it could not run at all.
fn run_logged_output(
    what: &str,
    command: &mut Command,
    log: &Path,
) -> Result<(String, Option<CommandError>), CommandError> {
    let line = render_command(command);
    let error = |tail: String| CommandError {
        what: what.to_string(),
        command: line.clone(),
        tail,
    };
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| error(format!(": cannot create log directory: {e}")))?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| error(format!(": cannot open log {}: {e}", log.display())))?;
    let start = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = writeln!(file, "$ {line}");
    let after_line = file.stream_position().unwrap_or(start);
    let stdout = file
        .try_clone()
        .map_err(|e| error(format!(": cannot share log: {e}")))?;
    let stderr = file
        .try_clone()
        .map_err(|e| error(format!(": cannot share log: {e}")))?;
    let status = command
        .stdin(child_stdin())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .map_err(|e| error(format!(": cannot start it: {e}")))?;
    let output = log_text(log, after_line);
    if status.success() {
        return Ok((output, None));
    }
    let tail = log_tail(log, start, 25);
    let first = first_error(log, start)
        .map(|line| format!("; first error: {line}"))
        .unwrap_or_default();
    // A full file system may have kept the command from writing even its complaint.
    let full = if output.contains("No space left on device") {
        format!(
            "; the file system of {} is full: free space on it, or pass --cache-dir on another \
             file system",
            log.parent().unwrap_or(log).display()
        )
    } else if let Some(free) = free_bytes(log.parent().unwrap_or(log)).filter(|&f| f < 1 << 20) {
        // Programs word it their own way ("fixdep: not all data was written").
        format!(
            "; the file system of {} has {} KiB free: it is full; free space on it, or pass \
             --cache-dir on another file system",
            log.parent().unwrap_or(log).display(),
            free / 1024
        )
    } else if output.trim().is_empty() && start == after_line {
        format!(
            "; nothing reached the log {}: is its file system full?",
            log.display()
        )
    } else {
        String::new()
    };
    let failure = error(format!(
        " ({status}){first}{full}; last lines of {}:\n{tail}",
        log.display()
    ));
    Ok((output, Some(failure)))
}

/// What the log got after byte `start`.
fn log_text(log: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.seek(SeekFrom::Start(start));
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// The first line of the compiler's, the linker's or modpost's own error in what the log got
/// after byte `start`: what a user needs first, which the tail often lost behind make's
/// "Error 2" lines.
fn first_error(log: &Path, start: u64) -> Option<String> {
    let mut text = String::new();
    let mut file = File::open(log).ok()?;
    file.seek(SeekFrom::Start(start)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|line| {
            line.contains(": error:")
                || line.contains(": fatal error:")
                || line.contains("No space left on device")
                || line.starts_with("ERROR: ")
                || line.contains(": undefined reference to ")
        })
        .map(|line| line.trim().to_string())
}

/// Runs `command` and returns its standard output; for short queries such as a version.
pub fn run_captured(what: &str, command: &mut Command) -> Result<String, CommandError> {
    let line = render_command(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CommandError {
            what: what.to_string(),
            command: line.clone(),
            tail: format!(": cannot start it: {e}"),
        })?;
    if !output.status.success() {
        return Err(CommandError {
            what: what.to_string(),
            command: line,
            tail: format!(
                " ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn render_command(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last `lines` lines that the log got after byte `start`.
fn log_tail(log: &Path, start: u64, lines: usize) -> String {
    let text = log_text(log, start);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A kernel source tree and the `O=` directory it builds into.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// The source tree (`srctree`); never written.
    pub source: PathBuf,
    /// The output directory (`O=`).
    pub output: PathBuf,
    /// Parallel jobs for make.
    pub jobs: usize,
    /// The log every command appends to.
    pub log: PathBuf,
    /// The kernel release to build for (`KERNELRELEASE=`, which goes into the vermagic);
    /// `None` lets the tree's `scripts/setlocalversion` decide.
    pub release: Option<String>,
    /// `VAR=VALUE` arguments for every make run (the kernel's toolchain).
    pub make_vars: Vec<String>,
}

impl KernelBuild {
    /// `make -C SOURCE O=OUTPUT`, as Kbuild documents it: its top Makefile starts a second
    /// make in the output directory.
    fn make(&self) -> Command {
        let mut command = self.make_no_arguments();
        self.make_arguments(&mut command);
        command
    }

    fn make_no_arguments(&self) -> Command {
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(&self.source)
            .arg(format!("O={}", self.output.display()));
        command
    }

    /// The make that Kbuild's top Makefile would start for [`Self::make`] (in the output
    /// directory, `-f` the source tree's Makefile; `--no-print-directory` is what tells it
    /// that it is that second make), run directly, so that make's `-o` options, which make
    /// does not pass on, reach it: [`UNUSED_TOOLS`] are not built. A kernel whose Makefile
    /// starts a second make anyway just builds them.
    fn make_in_output(&self) -> Command {
        let output = std::path::absolute(&self.output).unwrap_or_else(|_| self.output.clone());
        let makefile = std::path::absolute(self.source.join("Makefile"))
            .unwrap_or_else(|_| self.source.join("Makefile"));
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(&output)
            .arg("-f")
            .arg(makefile)
            .arg("--no-print-directory")
            .arg(format!("O={}", output.display()));
        for tool in UNUSED_TOOLS {
            command.arg("-o").arg(tool);
        }
        self.make_arguments(&mut command);
        command
    }

    /// What every make run gets: the jobs, the release, the user's variables, the compiler
    /// cache's environment, and the build root (`in_root`; once per command: entering it
    /// twice would look for the binds inside the root).
    fn make_arguments(&self, command: &mut Command) {
        command.arg(format!("-j{}", self.jobs.max(1)));
        if let Some(release) = &self.release {
            command.arg(format!("KERNELRELEASE={release}"));
        }
        command.args(&self.make_vars);
        self.compiler_cache_env(command);
        in_root(command);
    }

    /// What a compiler cache needs to find a unit compiled in another kpatch-rs cache (an
    /// empty one, another user's, another machine's): ccache rewrites the absolute paths under
    /// `CCACHE_BASEDIR` (here the cache entry, which holds the `O=` directories, the patched
    /// tree and the patch-author headers, and whose name is the same in every cache) into
    /// relative ones, and with `CCACHE_NOHASHDIR` leaves the working directory out of the key
    /// of a `-g` compile (it is only the objects' `DW_AT_comp_dir`, which no module byte
    /// comes from). Set only when the user has set neither.
    fn compiler_cache_env(&self, command: &mut Command) {
        let user_set = ["CCACHE_BASEDIR", "CCACHE_NOHASHDIR", "CCACHE_HASHDIR"]
            .iter()
            .any(|var| std::env::var_os(var).is_some());
        if user_set {
            return;
        }
        if let Some(entry) = self.output.parent() {
            command
                .env("CCACHE_BASEDIR", entry)
                .env("CCACHE_NOHASHDIR", "1");
        }
    }

    /// Installs `config` as the build's `.config` and prepares the tree for building single
    /// objects and external modules, with the `KCFLAGS` (and objtool variable) that
    /// [`Self::build_objects`] gets `extra_cflags` for: what the preparation compiles (`bounds.s`, `asm-offsets.s`,
    /// modpost's `empty.o`) then has the command line the object builds check it against,
    /// and is not compiled a second time by the first of them. A build directory already
    /// prepared for the same config keeps its state, so the second run is fast.
    pub fn prepare(&self, config: &Path, extra_cflags: &str) -> Result<(), CommandError> {
        let fail = |tail: String| CommandError {
            what: "preparing the kernel build".to_string(),
            command: format!("cp {} {}/.config", config.display(), self.output.display()),
            tail,
        };
        fs::create_dir_all(&self.output).map_err(|e| fail(format!(": {e}")))?;
        let wanted = fs::read(config).map_err(|e| fail(format!(": cannot read config: {e}")))?;
        let dot_config = self.output.join(".config");
        let stamp = self.prepared_stamp();
        if self.is_prepared(&wanted) {
            return Ok(());
        }
        fs::write(&dot_config, &wanted).map_err(|e| fail(format!(": {e}")))?;
        let kcflags = object_kcflags(extra_cflags);
        run_logged(
            "configuring the kernel build",
            self.make().args([&kcflags, "olddefconfig"]),
            &self.log,
        )?;
        // The preparation compiles modpost's `empty.o` with objtool (the object builds'
        // objtool variable), so objtool must exist by then, which Kbuild's own order (objtool
        // beside `prepare0`) does not promise. A makefile read after Kbuild's orders objtool
        // before `prepare0` only, so that it builds while `archprepare` does (about a second
        // less than building it first); where it would not reach Kbuild's final make, it
        // says so and objtool is built first.
        let configured = fs::read_to_string(&dot_config).unwrap_or_default();
        let objtool = configured.lines().any(|line| line == "CONFIG_OBJTOOL=y");
        let prepare = |extra: &[&std::ffi::OsStr]| {
            let mut command = self.make_in_output();
            command
                .args(extra)
                .args([&kcflags, OBJTOOL_PER_OBJECT, "modules_prepare"]);
            command
        };
        let mut prepared = false;
        if objtool {
            let order = self.output.join(".kpatch-rs-objtool-order.mk");
            fs::write(&order, OBJTOOL_ORDER_MK).map_err(|e| fail(format!(": {e}")))?;
            let order = std::path::absolute(&order).unwrap_or(order);
            match run_logged_output(
                "preparing the kernel build (objtool, modules_prepare)",
                &mut prepare(&["-f".as_ref(), order.as_os_str()]),
                &self.log,
            )? {
                (_, None) => prepared = true,
                (output, Some(_)) if output.contains(OBJTOOL_ORDER_UNREACHED) => {
                    run_logged(
                        "preparing the kernel build (objtool)",
                        self.make_in_output().args([&kcflags, "tools/objtool"]),
                        &self.log,
                    )?;
                }
                (_, Some(error)) => return Err(error),
            }
        }
        if !prepared {
            run_logged(
                "preparing the kernel build (modules_prepare)",
                &mut prepare(&[]),
                &self.log,
            )?;
        }
        fs::write(&stamp, &wanted).map_err(|e| fail(format!(": {e}")))?;
        Ok(())
    }

    /// The file whose content is the config the build directory was prepared for, written
    /// when `prepare` finished.
    pub fn prepared_stamp(&self) -> PathBuf {
        self.output.join(".kpatch-prepared")
    }

    /// Whether the build directory is prepared, completely, for the config `wanted`.
    pub fn is_prepared(&self, wanted: &[u8]) -> bool {
        fs::read(self.prepared_stamp()).ok().as_deref() == Some(wanted)
            && self.output.join(".config").is_file()
    }

    /// Builds the whole tree (vmlinux and modules), as the kernel's own build does, with every
    /// tool (none of [`UNUSED_TOOLS`] assumed made: linking vmlinux runs them); its `.cmd`
    /// files then tell which objects include which header.
    pub fn build_all(&self, what: &str) -> Result<(), CommandError> {
        run_logged(what, self.make().args(["vmlinux", "modules"]), &self.log)
    }

    /// Builds `objects` (paths relative to the tree, such as `fs/proc/cmdline.o`) through
    /// Kbuild's single-object rule, with the diff's code-generation flags and `extra_cflags`.
    /// Objects already present are removed first, so that nothing left from an earlier run
    /// with other sources can pass for a fresh build.
    pub fn build_objects(
        &self,
        what: &str,
        objects: &[PathBuf],
        extra_cflags: &str,
    ) -> Result<(), CommandError> {
        for object in objects {
            let _ = fs::remove_file(self.output.join(object));
        }
        // Kbuild's single-object rule goes through `prepare` again, so it gets the same tools
        // assumed made as the preparation.
        let mut command = self.make_in_output();
        command.arg(object_kcflags(extra_cflags));
        // With IBT, Kbuild runs objtool on vmlinux.o as a whole instead of on each object, so a
        // single object would come without its ORC unwind data, return-thunk and call sites.
        // Running it per object gives the diff those tables for the code it takes.
        command.arg(OBJTOOL_PER_OBJECT);
        command.args(objects);
        run_logged(what, &mut command, &self.log)
    }

    /// Builds the external module in `directory` (`make M=`), with `targets` (such as
    /// `modules`, or single objects).
    pub fn build_external(
        &self,
        what: &str,
        directory: &Path,
        targets: &[&str],
        extra_cflags: &str,
    ) -> Result<(), CommandError> {
        let mut command = Command::new("make");
        command.arg("-C").arg(&self.output);
        self.run_external(what, command, directory, targets, extra_cflags)
    }

    /// [`Self::build_external`] as `make -C SOURCE O=OUTPUT M=DIRECTORY`, which reads Kbuild's
    /// top Makefile from the source tree, never the output directory's generated `Makefile`:
    /// for a build that runs while another make builds objects in the output directory, as
    /// each of those writes that file again.
    pub fn build_external_beside(
        &self,
        what: &str,
        directory: &Path,
        targets: &[&str],
        extra_cflags: &str,
    ) -> Result<(), CommandError> {
        self.run_external(
            what,
            self.make_no_arguments(),
            directory,
            targets,
            extra_cflags,
        )
    }

    fn run_external(
        &self,
        what: &str,
        mut command: Command,
        directory: &Path,
        targets: &[&str],
        extra_cflags: &str,
    ) -> Result<(), CommandError> {
        command.arg(format!("M={}", directory.display()));
        self.make_arguments(&mut command);
        if !extra_cflags.is_empty() {
            command.arg(format!("KCFLAGS={extra_cflags}"));
        }
        command.args(targets);
        run_logged(what, &mut command, &self.log)
    }
}

/// The `KCFLAGS=` argument of the object builds: the diff's flags and `extra_cflags`.
fn object_kcflags(extra_cflags: &str) -> String {
    format!("KCFLAGS={DIFF_KCFLAGS} {extra_cflags}")
        .trim_end()
        .to_string()
}

/// How `patch` is run: a dry run with the fuzz it may use, or for real (without fuzz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchMode {
    DryRun { fuzz: u32 },
    Apply,
}

/// What one run of `patch` printed, and the error when it failed.
#[derive(Debug)]
pub struct PatchRun {
    pub output: String,
    pub failure: Option<CommandError>,
}

/// Runs `patch -p1` on `tree` with `patch` (`patches::apply` decides what to make of it).
pub fn run_patch(
    tree: &Path,
    patch: &Path,
    mode: PatchMode,
    log: &Path,
) -> Result<PatchRun, CommandError> {
    // `patch -d` reads `-i` relative to the tree, so a relative path must be made absolute.
    let patch = &std::path::absolute(patch).unwrap_or_else(|_| patch.to_path_buf());
    let mut command = Command::new("patch");
    command
        .arg("-p1")
        .arg("--batch")
        .arg("--forward")
        .arg("--no-backup-if-mismatch")
        .arg("-r")
        .arg("-")
        .arg(format!(
            "--fuzz={}",
            match mode {
                PatchMode::DryRun { fuzz } => fuzz,
                PatchMode::Apply => 0,
            }
        ))
        .arg("-d")
        .arg(tree)
        .arg("-i")
        .arg(patch);
    if matches!(mode, PatchMode::DryRun { .. }) {
        command.arg("--dry-run");
    }
    let what = format!("applying {}", patch.display());
    let (output, failure) = run_logged_output(&what, &mut command, log)?;
    Ok(PatchRun { output, failure })
}

/// The `ld` that links kernel objects for x86_64.
pub fn link_relocatable(output: &Path, inputs: &[PathBuf], log: &Path) -> Result<(), CommandError> {
    let mut command = Command::new("ld");
    command
        .args(["-r", "-m", "elf_x86_64", "-o"])
        .arg(output)
        .args(inputs);
    run_logged("linking the livepatch objects", in_root(&mut command), log)
}

/// Signs `module` into `signed` with the kernel's `scripts/sign-file`, as the kernel's own
/// `modules_install` does: `sign-file HASH KEY CERT MODULE DEST`. The key may be a PKCS#11
/// URI; `KBUILD_SIGN_PIN` passes through from the environment, as with the kernel's build.
pub fn sign_file(
    sign_file: &Path,
    hash: &str,
    key: &str,
    cert: &Path,
    module: &Path,
    signed: &Path,
    log: &Path,
) -> Result<(), CommandError> {
    let mut command = Command::new(sign_file);
    command.arg(hash).arg(key).arg(cert).arg(module).arg(signed);
    run_logged("signing the module", in_root(&mut command), log)
}

/// Runs one job of `kpatch-rs batch` (its own binary's `build`): `program` with `args` and no
/// input, standard error appended to `log` (after the command line), standard output
/// returned with the exit code, which is None when a signal ended the job.
pub fn run_job(
    program: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
) -> Result<(Option<i32>, Vec<u8>), CommandError> {
    let mut command = Command::new(program);
    command.args(args);
    let line = render_command(&command);
    let error = |tail: String| CommandError {
        what: "running a batch job".to_string(),
        command: line.clone(),
        tail,
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| error(format!(": cannot open log {}: {e}", log.display())))?;
    let _ = writeln!(file, "$ {line}");
    let output = command
        .stdin(Stdio::null())
        .stderr(file)
        .output()
        .map_err(|e| error(format!(": cannot start it: {e}")))?;
    Ok((output.status.code(), output.stdout))
}

#[cfg(test)]
mod tests {
    use super::{render_command, KernelBuild};
    use std::path::PathBuf;

    fn kernel_build() -> KernelBuild {
        KernelBuild {
            source: PathBuf::from("/src/linux"),
            output: PathBuf::from("/cache/entry/original"),
            jobs: 2,
            log: PathBuf::from("/cache/entry/original.log"),
            release: Some("6.12.0".to_string()),
            make_vars: vec!["LLVM=1".to_string()],
        }
    }

    /// The order makefile, read after a Makefile shaped like Kbuild's (a final make that
    /// defines `srctree`, `prepare` wanting `prepare0` and `tools/objtool` side by side):
    /// objtool is made before `prepare0`'s recipe even with parallel jobs; read by a make
    /// that is not the final one, it stops with the words the fallback looks for.
    #[test]
    fn the_objtool_order_makefile_orders_objtool_first_or_says_it_cannot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kbuild_like = "srctree := .\nprepare: prepare0 tools/objtool\nprepare0: archprepare\n\
            \t@test -e objtool.done && echo empty.o with objtool\narchprepare:\n\t@:\n\
            tools/objtool:\n\t@sleep 0.3; touch objtool.done\n.PHONY: prepare prepare0 archprepare tools/objtool\n";
        std::fs::write(dir.path().join("Makefile"), kbuild_like).expect("write");
        std::fs::write(dir.path().join("order.mk"), super::OBJTOOL_ORDER_MK).expect("write");
        let make = |makefile: &str| {
            std::process::Command::new("make")
                .arg("-C")
                .arg(dir.path())
                .args(["-j4", "-f", makefile, "-f", "order.mk", "prepare"])
                .output()
                .expect("make")
        };
        let ordered = make("Makefile");
        assert!(ordered.status.success(), "{ordered:?}");
        assert!(
            String::from_utf8_lossy(&ordered.stdout).contains("empty.o with objtool"),
            "{ordered:?}"
        );
        // A make before Kbuild's final one has no `srctree`.
        std::fs::write(dir.path().join("outer.mk"), "prepare:\n\t@:\n").expect("write");
        let outer = make("outer.mk");
        assert!(!outer.status.success());
        assert!(
            String::from_utf8_lossy(&outer.stderr).contains(super::OBJTOOL_ORDER_UNREACHED),
            "{outer:?}"
        );
    }

    #[test]
    fn preparing_and_object_builds_skip_the_vmlinux_only_tools_but_the_full_build_makes_them() {
        let build = kernel_build();
        // Make's `-o` is not passed on to a second make, so the command must be that second
        // make itself: in the output directory, Kbuild's Makefile from the source tree,
        // `--no-print-directory` (without which Kbuild starts another make).
        assert_eq!(
            render_command(&build.make_in_output()),
            "make -C /cache/entry/original -f /src/linux/Makefile --no-print-directory \
             O=/cache/entry/original -o tools/bpf/resolve_btfids -o archscripts -j2 \
             KERNELRELEASE=6.12.0 LLVM=1"
        );
        assert_eq!(
            render_command(&build.make()),
            "make -C /src/linux O=/cache/entry/original -j2 KERNELRELEASE=6.12.0 LLVM=1"
        );
        // A relative output directory is made absolute: after `-C` it would name another one.
        let relative = KernelBuild {
            output: PathBuf::from("entry/original"),
            ..kernel_build()
        };
        let cwd = std::env::current_dir().expect("cwd");
        let line = render_command(&relative.make_in_output());
        assert!(
            line.contains(&format!("O={}", cwd.join("entry/original").display())),
            "{line}"
        );
    }
    #[test]
    fn the_first_compiler_error_of_this_run_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let earlier = "x.c:1:1: error: from an earlier run\n";
        std::fs::write(
            &log,
            format!(
                "{earlier}$ make fs/x.o\n  CC fs/x.o\nfs/x.c:3:9: error: 'y' undeclared\n\
                 fs/x.c:4:1: error: later\nmake[2]: *** Error 1\n"
            ),
        )
        .expect("write");
        assert_eq!(
            super::first_error(&log, earlier.len() as u64).as_deref(),
            Some("fs/x.c:3:9: error: 'y' undeclared")
        );
        std::fs::write(
            &log,
            "ERROR: modpost: module m uses symbol s from namespace N\n",
        )
        .expect("write");
        assert_eq!(
            super::first_error(&log, 0).as_deref(),
            Some("ERROR: modpost: module m uses symbol s from namespace N")
        );
    }
}
