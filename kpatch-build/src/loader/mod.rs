//! The loader: `kpatch-rs load|unload|list|info` over the kernel's livepatch sysfs.
//!
//! Loading is `finit_module` (retried while another transition keeps the kernel busy), then a
//! wait for `/sys/kernel/livepatch/NAME/transition` to drop to 0. A transition that does not
//! finish in time is reported with every task not yet in the target state (its kernel stack,
//! and which patched function it sleeps in), then reversed and the module removed, so that a
//! failed load leaves the kernel as it was. Unloading disables, waits for the patch to leave
//! sysfs and for the module's use count to drop, and removes the module. Listing reads every
//! patch's attributes, objects and functions, and its place in the stack (`stack_order` where
//! the kernel has it, else the order of `/proc/modules`, newest first).
//!
//! The file and system-call edge is [`Host`]; what it reads is parsed by the pure
//! functions of [`parse`]. No program is started.

pub mod parse;
mod syscall;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::build::{io_error, IoError};
use crate::inspect::{self, InspectError, Inspection};
use parse::{Frame, ModuleLine, PatchState};

/// How often the loader looks at a transition while it waits.
const POLL: Duration = Duration::from_millis(100);
/// How long a module's use count may take to drop to 0 once its patch left sysfs: the
/// livepatch core drops its reference from a work item after the sysfs directory goes.
const REFCOUNT_WAIT: Duration = Duration::from_secs(15);
/// The most kernel stack frames shown per waiting task.
const SHOWN_FRAMES: usize = 12;

/// Where the loader finds the kernel: the running one, or a copy of its files for tests.
#[derive(Debug, Clone)]
pub struct Host {
    livepatch: PathBuf,
    proc: PathBuf,
    sys_module: PathBuf,
}

/// How long to wait and how often to retry.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a transition may take.
    pub timeout: Duration,
    /// How many times a load or a disable is tried while another transition is in progress.
    pub attempts: u32,
    /// The pause between two attempts.
    pub retry_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(60),
            attempts: 5,
            retry_interval: Duration::from_secs(2),
        }
    }
}

/// One livepatch as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Livepatch {
    /// The patch's name, which is its module's.
    pub name: String,
    /// Whether `/sys/kernel/livepatch/NAME` exists; false for a livepatch module that stays
    /// loaded after its patch was disabled.
    pub in_sysfs: bool,
    pub enabled: bool,
    /// Whether a transition of this patch is in progress.
    pub transition: bool,
    /// Whether it replaces all earlier patches (`replace`).
    pub replace: Option<bool>,
    /// Its place in the stack of enabled patches, 1 at the bottom.
    pub stack_order: Option<usize>,
    /// Its module's line in `/proc/modules`.
    pub module: Option<ModuleLine>,
    pub objects: Vec<PatchedObject>,
}

/// One object (`vmlinux` or a module) a patch changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedObject {
    pub name: String,
    /// Whether its functions are patched now (false for a module that is not loaded).
    pub patched: Option<bool>,
    pub functions: Vec<PatchedFunction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatchedFunction {
    pub name: String,
    pub sympos: u64,
}

/// A frame of a waiting task's stack in a function the patch replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldIn {
    /// The function the patch replaces, or the patch's own function.
    pub function: String,
    /// The name the stack gives it (another symbol at the same address, or the same).
    pub shown_as: String,
    /// The patch module's own code (what an unpatching transition waits for tasks to leave).
    pub new_code: bool,
}

/// A task that a transition still waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The process (thread group) id.
    pub pid: u32,
    /// The thread id.
    pub tid: u32,
    pub comm: String,
    pub kernel_thread: bool,
    pub state: PatchState,
    /// The patch's functions on its stack, innermost first: what keeps it from switching.
    pub in_patched_functions: Vec<HeldIn>,
    pub stack: Vec<Frame>,
}

/// A load that did what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The module was loaded and its transition finished.
    Enabled { name: String, took: Duration },
    /// The patch was already loaded and enabled.
    AlreadyEnabled { name: String },
}

/// What became of a patch whose transition did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Reversed and the module removed: the kernel is as it was before.
    Removed,
    /// Reversed, but the module could not be removed (why).
    NotRemoved(String),
    /// Reversing did not finish within the timeout either: the patch stays in transition.
    ReversalStalled,
    /// Reverted to enabled (a disable that stalled): the patch stays fully applied.
    Reenabled,
    /// The reversal could not be started (why).
    NotReversed(String),
}

/// Why a loader command failed. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error(
        "{} is not a livepatch module (its .modinfo has no livepatch=Y): load it with insmod, or build a livepatch with `kpatch-rs build`",
        file.display()
    )]
    NotLivepatch { file: PathBuf },
    #[error(
        "the running kernel has no livepatch support ({} is missing): it needs CONFIG_LIVEPATCH, and sysfs mounted on /sys",
        dir.display()
    )]
    NoLivepatchSupport { dir: PathBuf },
    #[error("cannot load {}: {reason}", file.display())]
    LoadFailed { file: PathBuf, reason: String },
    #[error(
        "cannot load {}: another livepatch transition kept the kernel busy through {attempts} attempts; `kpatch-rs list` shows the patch in transition and the tasks it waits for",
        file.display()
    )]
    Busy { file: PathBuf, attempts: u32 },
    #[error(
        "livepatch {name} is being disabled (its transition is in progress): wait until `kpatch-rs list` no longer shows it, then load it again"
    )]
    BeingDisabled { name: String },
    #[error("{}", stalled_message(name, *enabling, *timeout, tasks, cleanup))]
    Stalled {
        name: String,
        /// True for a load (patching), false for an unload (unpatching).
        enabling: bool,
        timeout: Duration,
        tasks: Vec<Task>,
        cleanup: Cleanup,
    },
    #[error("livepatch {name} vanished from sysfs during its transition: something else disabled it; `kpatch-rs list` shows what is loaded")]
    Vanished { name: String },
    #[error("no livepatch {name} is loaded: `kpatch-rs list` shows the livepatches that are")]
    NotLoaded { name: String },
    #[error(
        "module {name} is not a livepatch: `kpatch-rs unload` removes livepatches only (use rmmod)"
    )]
    NotALivepatchModule { name: String },
    #[error("cannot disable livepatch {name}: {reason}")]
    DisableFailed { name: String, reason: String },
    #[error("cannot remove module {name}: {reason}")]
    RemoveFailed { name: String, reason: String },
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
}

impl Default for Host {
    fn default() -> Self {
        Host::under(Path::new("/"))
    }
}

impl Host {
    /// The kernel whose `/sys` and `/proc` are under `root` (`/` for the running kernel).
    pub fn under(root: &Path) -> Host {
        Host {
            livepatch: root.join("sys/kernel/livepatch"),
            proc: root.join("proc"),
            sys_module: root.join("sys/module"),
        }
    }

    fn patch_dir(&self, name: &str) -> PathBuf {
        self.livepatch.join(name)
    }

    fn require_livepatch(&self) -> Result<(), LoaderError> {
        if self.livepatch.is_dir() {
            Ok(())
        } else {
            Err(LoaderError::NoLivepatchSupport {
                dir: self.livepatch.clone(),
            })
        }
    }

    fn modules(&self) -> Result<Vec<ModuleLine>, LoaderError> {
        let path = self.proc.join("modules");
        let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
        parse::proc_modules(&text).map_err(|reason| LoaderError::Unreadable { path, reason })
    }

    /// A sysfs flag of patch `name` (`enabled`, `transition`, ...); None when it is absent.
    fn patch_flag(&self, name: &str, attribute: &str) -> Result<Option<bool>, LoaderError> {
        let path = self.patch_dir(name).join(attribute);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse::flag(&text).map(Some).ok_or(LoaderError::Unreadable {
                path,
                reason: format!("{text:?} is neither 0 nor 1"),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error("read", &path)(error).into()),
        }
    }

    /// Every livepatch the kernel has, bottom of the stack first; livepatch modules whose
    /// patch is gone (disabled, module still loaded) come last.
    pub fn livepatches(&self) -> Result<Vec<Livepatch>, LoaderError> {
        self.require_livepatch()?;
        let modules = self.modules()?;
        let mut names = Vec::new();
        let entries =
            std::fs::read_dir(&self.livepatch).map_err(io_error("list", &self.livepatch))?;
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.livepatch))?;
            if entry.path().is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let mut patches = Vec::new();
        for name in &names {
            if let Some(patch) = self.read_patch(name, &modules)? {
                patches.push(patch);
            }
        }
        // Without `stack_order` (before Linux 6.13), the stack is the order patches were
        // enabled in: their modules' load order, which /proc/modules lists newest first.
        if patches.iter().all(|p| p.stack_order.is_none()) {
            let position = |name: &str| modules.iter().rposition(|m| m.name == name);
            let mut ordered: Vec<(usize, String)> = patches
                .iter()
                .filter_map(|p| Some((modules.len() - position(&p.name)?, p.name.clone())))
                .collect();
            ordered.sort();
            for (order, (_, name)) in ordered.iter().enumerate() {
                if let Some(patch) = patches.iter_mut().find(|p| &p.name == name) {
                    patch.stack_order = Some(order + 1);
                }
            }
        }
        patches.sort_by(|a, b| {
            (a.stack_order.is_none(), a.stack_order, &a.name).cmp(&(
                b.stack_order.is_none(),
                b.stack_order,
                &b.name,
            ))
        });
        for module in modules.iter().rev() {
            if module.is_livepatch() && !names.contains(&module.name) {
                patches.push(Livepatch {
                    name: module.name.clone(),
                    in_sysfs: false,
                    enabled: false,
                    transition: false,
                    replace: None,
                    stack_order: None,
                    module: Some(module.clone()),
                    objects: Vec::new(),
                });
            }
        }
        Ok(patches)
    }

    /// The livepatch `name` (the kernel's name, with `_`), if the kernel has it.
    pub fn livepatch(&self, name: &str) -> Result<Option<Livepatch>, LoaderError> {
        Ok(self.livepatches()?.into_iter().find(|p| p.name == name))
    }

    fn read_patch(
        &self,
        name: &str,
        modules: &[ModuleLine],
    ) -> Result<Option<Livepatch>, LoaderError> {
        let dir = self.patch_dir(name);
        let Some(enabled) = self.patch_flag(name, "enabled")? else {
            // Removed between the listing and now.
            return Ok(None);
        };
        let transition = self.patch_flag(name, "transition")?.unwrap_or(false);
        let replace = self.patch_flag(name, "replace")?;
        let stack_order = std::fs::read_to_string(dir.join("stack_order"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let mut objects = Vec::new();
        for object_dir in sorted_dirs(&dir)? {
            let object = file_name(&object_dir);
            let patched = std::fs::read_to_string(object_dir.join("patched"))
                .ok()
                .and_then(|text| parse::flag(&text));
            let mut functions = Vec::new();
            for function_dir in sorted_dirs(&object_dir)? {
                if let Some((name, sympos)) = parse::function_dir(&file_name(&function_dir)) {
                    functions.push(PatchedFunction { name, sympos });
                }
            }
            objects.push(PatchedObject {
                name: object,
                patched,
                functions,
            });
        }
        Ok(Some(Livepatch {
            name: name.to_string(),
            in_sysfs: true,
            enabled,
            transition,
            replace,
            stack_order,
            module: modules.iter().find(|m| m.name == name).cloned(),
            objects,
        }))
    }

    /// The tasks that `patch`'s transition still waits for: each task whose `patch_state` is
    /// neither idle nor the transition's target.
    pub fn waiting_tasks(&self, patch: &Livepatch) -> Vec<Task> {
        let target = PatchState::target(patch.enabled);
        let patched: Vec<parse::ObjectFunction> = patch
            .objects
            .iter()
            .flat_map(|object| {
                let module = (object.name != "vmlinux").then(|| object.name.clone());
                object
                    .functions
                    .iter()
                    .map(move |f| (module.clone(), f.name.clone()))
            })
            .collect();
        // Read only when some task waits: the symbol table is large.
        let mut aliases = None;
        let mut tasks = Vec::new();
        for process in numbered_dirs(&self.proc) {
            for thread in numbered_dirs(&process.1.join("task")) {
                let dir = &thread.1;
                let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
                let Some(state) = read("patch_state").and_then(|s| parse::patch_state(&s)) else {
                    continue;
                };
                if state == PatchState::Idle || state == target {
                    continue;
                }
                let stack = read("stack").map(|s| parse::stack(&s)).unwrap_or_default();
                let aliases = aliases.get_or_insert_with(|| {
                    let kallsyms =
                        std::fs::read_to_string(self.proc.join("kallsyms")).unwrap_or_default();
                    parse::aliases(&kallsyms, &patched)
                });
                let in_patched_functions = stack
                    .iter()
                    .filter_map(|frame| {
                        if frame.module.as_deref() == Some(patch.name.as_str()) {
                            return Some(HeldIn {
                                function: frame.function.clone(),
                                shown_as: frame.function.clone(),
                                new_code: true,
                            });
                        }
                        let (_, function) =
                            aliases.get(&(frame.module.clone(), frame.function.clone()))?;
                        Some(HeldIn {
                            function: function.clone(),
                            shown_as: frame.function.clone(),
                            new_code: false,
                        })
                    })
                    .collect();
                tasks.push(Task {
                    pid: process.0,
                    tid: thread.0,
                    comm: read("comm").unwrap_or_default().trim().to_string(),
                    kernel_thread: read("stat")
                        .and_then(|s| parse::is_kernel_thread(&s))
                        .unwrap_or(false),
                    state,
                    in_patched_functions,
                    stack,
                });
            }
        }
        tasks
    }

    /// Loads the livepatch module `file` and waits for its transition.
    pub fn load(
        &self,
        file: &Path,
        options: &Options,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Loaded, LoaderError> {
        let inspection = inspect_file(file)?;
        if !inspection.livepatch {
            return Err(LoaderError::NotLivepatch {
                file: file.to_path_buf(),
            });
        }
        self.require_livepatch()?;
        let name = inspection.module.clone();
        let started = Instant::now();
        match self.patch_flag(&name, "enabled")? {
            Some(true) => {
                if self.patch_flag(&name, "transition")? != Some(true) {
                    return Ok(Loaded::AlreadyEnabled { name });
                }
                progress(&format!(
                    "{name} is loaded and in transition: waiting for it"
                ));
            }
            Some(false) => return Err(LoaderError::BeingDisabled { name }),
            None => {
                if self.modules()?.iter().any(|m| m.name == name) {
                    // Its patch was disabled earlier and the module left loaded.
                    progress(&format!("removing the disabled module {name} first"));
                    self.remove_module(&name)?;
                }
                progress(&format!("loading {} ({name})", file.display()));
                self.insert(file, &inspection, options, progress)?;
            }
        }
        match self.wait_transition(&name, options.timeout, progress)? {
            true => Ok(Loaded::Enabled {
                name,
                took: started.elapsed(),
            }),
            false => Err(self.stalled(&name, true, options, progress)),
        }
    }

    /// `finit_module`, retried while another transition keeps the kernel busy (EBUSY).
    fn insert(
        &self,
        file: &Path,
        inspection: &Inspection,
        options: &Options,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LoaderError> {
        let opened = std::fs::File::open(file).map_err(io_error("open", file))?;
        let attempts = options.attempts.max(1);
        for attempt in 1..=attempts {
            let Err(error) = syscall::finit_module(&opened) else {
                return Ok(());
            };
            if error.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoaderError::LoadFailed {
                    file: file.to_path_buf(),
                    reason: self.load_failure(&error, inspection),
                });
            }
            if attempt < attempts {
                progress(&format!(
                    "another livepatch transition is in progress; trying again in {} s (attempt {} of {attempts})",
                    options.retry_interval.as_secs_f32(),
                    attempt + 1
                ));
                std::thread::sleep(options.retry_interval);
            }
        }
        Err(LoaderError::Busy {
            file: file.to_path_buf(),
            attempts,
        })
    }

    /// What a failed `finit_module` means, and what to do.
    fn load_failure(&self, error: &io::Error, inspection: &Inspection) -> String {
        let advice = match error.raw_os_error() {
            Some(libc::EEXIST) => format!(
                "a module named {} is already loaded: `kpatch-rs list` shows it",
                inspection.module
            ),
            Some(libc::ENOEXEC) => {
                let built_for = parse::vermagic_release(&inspection.vermagic);
                let running = std::fs::read_to_string(self.proc.join("sys/kernel/osrelease"))
                    .unwrap_or_default();
                if !built_for.is_empty() && built_for != running.trim() {
                    format!(
                        "it was built for {built_for}, and the running kernel is {}: build it against the running kernel's tree",
                        running.trim()
                    )
                } else {
                    "the kernel rejected its format: the kernel log (dmesg) says why".to_string()
                }
            }
            Some(libc::ENOENT) => "a symbol it needs is missing from the running kernel (dmesg names it): was it built for this kernel and its modules?".to_string(),
            Some(libc::EPERM) => "loading modules needs root (CAP_SYS_MODULE), and the kernel may forbid it (kernel.modules_disabled, lockdown)".to_string(),
            Some(libc::EKEYREJECTED) | Some(libc::ENOKEY) | Some(libc::EBADMSG) => "the kernel requires a module signature it trusts: build with `kpatch-rs build --sign-key KEY --sign-cert CERT`".to_string(),
            Some(libc::EINVAL) => "the livepatch core refused it (the kernel log says why, e.g. a patch incompatible with the loaded ones)".to_string(),
            Some(libc::ENODEV) => "the livepatch core is not ready, or the module is going away: try again".to_string(),
            _ => "the kernel log (dmesg) says why".to_string(),
        };
        format!("{error}: {advice}")
    }

    /// Waits until patch `name` is out of transition: true when it is, false at the timeout.
    fn wait_transition(
        &self,
        name: &str,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<bool, LoaderError> {
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            match self.patch_flag(name, "transition")? {
                Some(false) => return Ok(true),
                Some(true) => {}
                None => {
                    return Err(LoaderError::Vanished {
                        name: name.to_string(),
                    })
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if !told {
                progress(&format!(
                    "waiting up to {} s for the transition of {name}",
                    timeout.as_secs()
                ));
                told = true;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until patch `name` has left sysfs: true when it has, false at the timeout.
    fn wait_gone(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.patch_dir(name).exists() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }

    /// A transition of `name` that did not finish: the tasks it waits for, then the
    /// transition reversed (and, for a load, the module removed).
    fn stalled(
        &self,
        name: &str,
        enabling: bool,
        options: &Options,
        progress: &mut dyn FnMut(&str),
    ) -> LoaderError {
        let tasks = match self.read_patch(name, &[]) {
            Ok(Some(patch)) => self.waiting_tasks(&patch),
            _ => Vec::new(),
        };
        progress(&format!(
            "the transition of {name} did not finish within {} s; reversing it",
            options.timeout.as_secs()
        ));
        let reversed = if enabling { "0" } else { "1" };
        let path = self.patch_dir(name).join("enabled");
        let cleanup = match std::fs::write(&path, reversed) {
            Err(error) => {
                Cleanup::NotReversed(format!("writing {reversed} to {}: {error}", path.display()))
            }
            Ok(()) if !enabling => match self.wait_transition(name, options.timeout, progress) {
                Ok(true) => Cleanup::Reenabled,
                _ => Cleanup::ReversalStalled,
            },
            Ok(()) => {
                if self.wait_gone(name, options.timeout) {
                    match self.remove_module(name) {
                        Ok(()) => Cleanup::Removed,
                        Err(error) => Cleanup::NotRemoved(error.to_string()),
                    }
                } else {
                    Cleanup::ReversalStalled
                }
            }
        };
        LoaderError::Stalled {
            name: name.to_string(),
            enabling,
            timeout: options.timeout,
            tasks,
            cleanup,
        }
    }

    /// Disables livepatch `target` (a name, or a module file whose name is read from it),
    /// waits for its transition and removes its module. Returns the patch's name.
    pub fn unload(
        &self,
        target: &str,
        options: &Options,
        progress: &mut dyn FnMut(&str),
    ) -> Result<String, LoaderError> {
        self.require_livepatch()?;
        let name = self.name_of(target)?;
        let modules = self.modules()?;
        match self.patch_flag(&name, "enabled")? {
            Some(enabled) => {
                if enabled {
                    progress(&format!("disabling {name}"));
                    self.disable(&name, options, progress)?;
                }
                if !self.wait_gone(&name, options.timeout) {
                    return Err(self.stalled(&name, false, options, progress));
                }
            }
            None => match modules.iter().find(|m| m.name == name) {
                None => return Err(LoaderError::NotLoaded { name }),
                Some(module) if !module.is_livepatch() => {
                    return Err(LoaderError::NotALivepatchModule { name })
                }
                Some(_) => {}
            },
        }
        progress(&format!("removing module {name}"));
        self.remove_module(&name)?;
        Ok(name)
    }

    /// Writes 0 to `enabled`, retried while another transition keeps the kernel busy.
    fn disable(
        &self,
        name: &str,
        options: &Options,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LoaderError> {
        let path = self.patch_dir(name).join("enabled");
        let attempts = options.attempts.max(1);
        for attempt in 1..=attempts {
            let Err(error) = std::fs::write(&path, "0") else {
                return Ok(());
            };
            if error.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoaderError::DisableFailed {
                    name: name.to_string(),
                    reason: format!("writing 0 to {}: {error}", path.display()),
                });
            }
            if attempt < attempts {
                progress(&format!(
                    "another livepatch transition is in progress; trying again in {} s (attempt {} of {attempts})",
                    options.retry_interval.as_secs_f32(),
                    attempt + 1
                ));
                std::thread::sleep(options.retry_interval);
            }
        }
        Err(LoaderError::DisableFailed {
            name: name.to_string(),
            reason: format!(
                "another livepatch transition kept the kernel busy through {attempts} attempts; `kpatch-rs list` shows it"
            ),
        })
    }

    /// Waits for module `name`'s use count to drop to 0, then removes it.
    fn remove_module(&self, name: &str) -> Result<(), LoaderError> {
        let refcnt = self.sys_module.join(name).join("refcnt");
        let deadline = Instant::now() + REFCOUNT_WAIT;
        loop {
            let count = std::fs::read_to_string(&refcnt)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            match count {
                Some(count) if count > 0 => {
                    if Instant::now() >= deadline {
                        return Err(LoaderError::RemoveFailed {
                            name: name.to_string(),
                            reason: format!(
                                "its use count stayed at {count} for {} s: something still holds it",
                                REFCOUNT_WAIT.as_secs()
                            ),
                        });
                    }
                    std::thread::sleep(POLL);
                }
                _ => break,
            }
        }
        syscall::delete_module(name).map_err(|error| LoaderError::RemoveFailed {
            name: name.to_string(),
            reason: match error.raw_os_error() {
                Some(libc::ENOENT) => format!("{error}: it is not loaded"),
                Some(libc::EWOULDBLOCK) | Some(libc::EBUSY) => {
                    format!("{error}: it is in use; try again later")
                }
                Some(libc::EPERM) => format!("{error}: removing modules needs root"),
                _ => error.to_string(),
            },
        })
    }

    /// The kernel's name for `target`: a module file's `.modinfo` name, or the name given
    /// with `-` as `_` (Kbuild's `KBUILD_MODNAME`), without a `.ko` suffix.
    pub fn name_of(&self, target: &str) -> Result<String, LoaderError> {
        let path = Path::new(target);
        if target.ends_with(".ko") && path.is_file() {
            return Ok(inspect_file(path)?.module);
        }
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| target.to_string());
        Ok(base.trim_end_matches(".ko").replace('-', "_"))
    }
}

impl Host {
    /// The running kernel's release (`uname -r`), from `/proc/sys/kernel/osrelease`.
    pub fn release(&self) -> Result<String, LoaderError> {
        let path = self.proc.join("sys/kernel/osrelease");
        let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
        Ok(text.trim().to_string())
    }
}

/// The livepatch modules installed for `release` under `root` (`root/RELEASE/*.ko`, as
/// `kpatch-rs package` lays them out), sorted by name: the order `load --all` loads them in.
/// No directory for the release means none installed.
pub fn installed(root: &Path, release: &str) -> Result<Vec<PathBuf>, LoaderError> {
    let dir = root.join(release);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("list", &dir)(error).into()),
    };
    let mut modules: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "ko") && path.is_file())
        .collect();
    modules.sort();
    Ok(modules)
}

/// `kpatch-rs inspect`'s reading of module `file`.
pub fn inspect_file(file: &Path) -> Result<Inspection, LoaderError> {
    let data = std::fs::read(file).map_err(io_error("read", file))?;
    Ok(inspect::inspect(&file.display().to_string(), &data)?)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The subdirectories of `dir`, sorted by name.
fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, LoaderError> {
    let mut dirs = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    dirs.push(entry.path());
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("list", dir)(error).into()),
    }
    dirs.sort();
    Ok(dirs)
}

/// The numbered entries of `dir` (`/proc`'s processes, a process's threads), sorted; tasks
/// that exit while they are read are skipped.
fn numbered_dirs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let number = entry.file_name().to_str()?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// One line per waiting task: who it is and where it sleeps, then its stack.
pub fn describe_tasks(tasks: &[Task], out: &mut String) {
    for task in tasks {
        let kind = if task.kernel_thread {
            "kernel thread"
        } else {
            "user task"
        };
        let thread = if task.pid == task.tid {
            String::new()
        } else {
            format!(" thread {}", task.tid)
        };
        let _ = write!(out, "  {}{thread} {} ({kind})", task.pid, task.comm);
        match task.in_patched_functions.first() {
            Some(held) if held.new_code => {
                let _ = writeln!(out, ", sleeping in {}, the patch's own code", held.function);
            }
            Some(held) if held.function == held.shown_as => {
                let _ = writeln!(
                    out,
                    ", sleeping in {}, which this patch replaces",
                    held.function
                );
            }
            Some(held) => {
                let _ = writeln!(
                    out,
                    ", sleeping in {} ({} on its stack), which this patch replaces",
                    held.function, held.shown_as
                );
            }
            None => {
                let _ = writeln!(out, ", no patched function on its stack");
            }
        }
        for frame in task.stack.iter().take(SHOWN_FRAMES) {
            let _ = writeln!(out, "      {}", frame.text);
        }
    }
}

fn stalled_message(
    name: &str,
    enabling: bool,
    timeout: Duration,
    tasks: &[Task],
    cleanup: &Cleanup,
) -> String {
    let mut text = format!(
        "the {} transition of {name} did not finish within {} s; ",
        if enabling { "patching" } else { "unpatching" },
        timeout.as_secs()
    );
    let code = if enabling { "old" } else { "patched" };
    match tasks.len() {
        0 => text.push_str("no task was found still waiting (it may have just switched)\n"),
        1 => {
            let _ = writeln!(text, "1 task still runs the {code} code:");
        }
        n => {
            let _ = writeln!(text, "{n} tasks still run the {code} code:");
        }
    }
    describe_tasks(tasks, &mut text);
    let again = if enabling { "load" } else { "unload" };
    match cleanup {
        Cleanup::Removed => text.push_str(
            "The transition was reversed and the module removed: the kernel runs as before.\n",
        ),
        Cleanup::Reenabled => {
            let _ = writeln!(
                text,
                "The transition was reversed: {name} stays loaded and enabled."
            );
        }
        Cleanup::NotRemoved(why) => {
            let _ = writeln!(
                text,
                "The transition was reversed, but the module stays loaded ({why}): remove it with `kpatch-rs unload {name}`."
            );
        }
        Cleanup::NotReversed(why) => {
            let _ = writeln!(
                text,
                "The transition could not be reversed ({why}): it goes on, and `kpatch-rs list` shows it."
            );
        }
        Cleanup::ReversalStalled => {
            let _ = writeln!(
                text,
                "Reversing the transition did not finish either: {name} stays in transition until those tasks leave the patched functions, then `kpatch-rs unload {name}` removes it. Writing 1 to /sys/kernel/livepatch/{name}/force ends the transition without the consistency check, and the module can then never be removed."
            );
        }
    }
    let kernel_threads = tasks
        .iter()
        .filter(|t| t.kernel_thread && !t.in_patched_functions.is_empty())
        .count();
    let user_tasks = tasks
        .iter()
        .filter(|t| !t.kernel_thread && !t.in_patched_functions.is_empty())
        .count();
    let mut advice = Vec::new();
    if user_tasks > 0 {
        advice.push(format!(
            "a task sleeping in a patched function switches only when it leaves it: wake it (end what it waits for, or send it a signal it handles) or stop it, then {again} again."
        ));
    }
    if kernel_threads > 0 {
        advice.push(
            "a kernel thread sleeping in a patched function cannot switch until it wakes and leaves it; if it never does (a thread's main loop), the patch cannot be applied while that function is changed.".to_string(),
        );
    }
    advice.push(format!(
        "give the tasks longer with `--timeout SECS` (the kernel itself signals the tasks still waiting every 15 s), then {again} again."
    ));
    text.push_str("What to do: ");
    text.push_str(&advice.join(" Or "));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_lists_the_release_modules_sorted_and_nothing_else() {
        let root = tempfile::tempdir().expect("temporary directory");
        let dir = root.path().join("6.12.0-test");
        std::fs::create_dir_all(dir.join("sub.ko")).expect("directory");
        for name in ["livepatch-b.ko", "livepatch-a.ko", "notes.txt"] {
            std::fs::write(dir.join(name), "x").expect("write");
        }
        std::fs::create_dir_all(root.path().join("6.1.0-other")).expect("directory");
        std::fs::write(root.path().join("6.1.0-other/livepatch-c.ko"), "x").expect("write");
        let found = installed(root.path(), "6.12.0-test").expect("listed");
        assert_eq!(
            found,
            vec![dir.join("livepatch-a.ko"), dir.join("livepatch-b.ko")]
        );
        assert!(installed(root.path(), "6.13.0-none")
            .expect("listed")
            .is_empty());
        let fake = FakeKernel::new("");
        fake.write("proc/sys/kernel/osrelease", "6.12.0-test\n");
        assert_eq!(
            Host::under(fake.root.path()).release().expect("release"),
            "6.12.0-test"
        );
    }

    /// A fake kernel under a temporary directory: `/proc/modules`, livepatch sysfs, tasks.
    struct FakeKernel {
        root: tempfile::TempDir,
    }

    impl FakeKernel {
        fn new(modules: &str) -> FakeKernel {
            let root = tempfile::tempdir().expect("temporary directory");
            let fake = FakeKernel { root };
            fake.write("proc/modules", modules);
            std::fs::create_dir_all(fake.root.path().join("sys/kernel/livepatch")).expect("sysfs");
            fake
        }

        fn write(&self, path: &str, text: &str) {
            let path = self.root.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("directory");
            std::fs::write(path, text).expect("write");
        }

        fn patch(&self, name: &str, enabled: bool, transition: bool, functions: &[&str]) {
            let dir = format!("sys/kernel/livepatch/{name}");
            self.write(
                &format!("{dir}/enabled"),
                if enabled { "1\n" } else { "0\n" },
            );
            self.write(
                &format!("{dir}/transition"),
                if transition { "1\n" } else { "0\n" },
            );
            self.write(&format!("{dir}/replace"), "0\n");
            for function in functions {
                let (object, function) = function.split_once(':').expect("object:function");
                self.write(&format!("{dir}/{object}/patched"), "1\n");
                std::fs::create_dir_all(
                    self.root.path().join(format!("{dir}/{object}/{function}")),
                )
                .expect("function");
            }
        }

        fn task(&self, pid: u32, tid: u32, comm: &str, state: &str, stack: &str, flags: u64) {
            let dir = format!("proc/{pid}/task/{tid}");
            self.write(&format!("{dir}/comm"), &format!("{comm}\n"));
            self.write(&format!("{dir}/patch_state"), state);
            self.write(&format!("{dir}/stack"), stack);
            self.write(
                &format!("{dir}/stat"),
                &format!("{tid} ({comm}) S 1 1 1 0 -1 {flags} 0 0"),
            );
        }

        fn host(&self) -> Host {
            Host::under(self.root.path())
        }
    }

    const MODULES: &str = "livepatch_b 12288 1 - Live 0x0 (K)\n\
                           race_target 12288 0 - Live 0x0 (O)\n\
                           livepatch_a 12288 1 - Live 0x0 (K)\n\
                           livepatch_old 12288 0 - Live 0x0 (K)\n";

    #[test]
    fn lists_every_livepatch_in_stack_order_with_its_functions() {
        let kernel = FakeKernel::new(MODULES);
        kernel.patch("livepatch_b", true, true, &["vmlinux:meminfo_proc_show,1"]);
        kernel.patch(
            "livepatch_a",
            true,
            false,
            &["vmlinux:cmdline_proc_show,1", "race_target:race_target_b,2"],
        );
        let patches = kernel.host().livepatches().expect("lists");
        let summary: Vec<(&str, bool, bool, bool, Option<usize>)> = patches
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.in_sysfs,
                    p.enabled,
                    p.transition,
                    p.stack_order,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("livepatch_a", true, true, false, Some(1)),
                ("livepatch_b", true, true, true, Some(2)),
                ("livepatch_old", false, false, false, None),
            ]
        );
        assert_eq!(
            patches[0].objects,
            [
                PatchedObject {
                    name: "race_target".to_string(),
                    patched: Some(true),
                    functions: vec![PatchedFunction {
                        name: "race_target_b".to_string(),
                        sympos: 2
                    }],
                },
                PatchedObject {
                    name: "vmlinux".to_string(),
                    patched: Some(true),
                    functions: vec![PatchedFunction {
                        name: "cmdline_proc_show".to_string(),
                        sympos: 1
                    }],
                },
            ]
        );
        assert_eq!(patches[0].replace, Some(false));
        assert_eq!(
            patches[1].module.as_ref().map(|m| m.refcount),
            Some(Some(1))
        );
    }

    #[test]
    fn the_kernels_stack_order_wins_over_the_module_order() {
        let kernel = FakeKernel::new(MODULES);
        kernel.patch("livepatch_a", true, false, &[]);
        kernel.patch("livepatch_b", true, false, &[]);
        kernel.write("sys/kernel/livepatch/livepatch_a/stack_order", "2\n");
        kernel.write("sys/kernel/livepatch/livepatch_b/stack_order", "1\n");
        let patches = kernel.host().livepatches().expect("lists");
        let order: Vec<(&str, Option<usize>)> = patches
            .iter()
            .filter(|p| p.in_sysfs)
            .map(|p| (p.name.as_str(), p.stack_order))
            .collect();
        assert_eq!(order, [("livepatch_b", Some(1)), ("livepatch_a", Some(2))]);
    }

    #[test]
    fn the_waiting_tasks_are_those_not_in_the_target_state_with_what_holds_them() {
        let kernel = FakeKernel::new(MODULES);
        kernel.patch(
            "livepatch_b",
            true,
            true,
            &["vmlinux:__x64_sys_pause,1", "race_target:race_target_b,1"],
        );
        // The stack names pause's code by its alias, as Linux 6.12 does.
        kernel.write(
            "proc/kallsyms",
            "ffffffff8105d0f1 t __do_sys_pause\nffffffff8105d0f1 T __x64_sys_pause\n",
        );
        let pause = "[<0>] __do_sys_pause+0x2a/0x50\n[<0>] do_syscall_64+0x55/0x110\n";
        kernel.task(40, 40, "sleeper", "0\n", pause, 0x400100);
        kernel.task(
            41,
            41,
            "plain",
            "0\n",
            "[<0>] __x64_sys_pause+0x2a/0x50\n",
            0x400100,
        );
        kernel.task(45, 45, "switched", "1\n", pause, 0x400100);
        kernel.task(42, 42, "idle", "-1\n", "", 0x400100);
        kernel.task(
            50,
            52,
            "worker",
            "0\n",
            "[<0>] race_target_b+0x1/0x2 [race_target]\n[<0>] kthread+0x1/0x2\n",
            0x208040,
        );
        // A same-named function of another object holds nothing.
        kernel.task(
            60,
            60,
            "other",
            "0\n",
            "[<0>] race_target_b+0x1/0x2\n",
            0x400100,
        );
        // The patch's own code holds a task too (an unpatching transition waits on it).
        let new_code = "[<0>] pause_new+0x1/0x2 [livepatch_b]\n";
        kernel.task(70, 70, "new", "0\n", new_code, 0x400100);
        let host = kernel.host();
        let patch = host
            .livepatch("livepatch_b")
            .expect("reads")
            .expect("there");
        let tasks = host.waiting_tasks(&patch);
        type Summary<'a> = (u32, u32, &'a str, bool, Vec<(&'a str, &'a str)>);
        let summary: Vec<Summary> = tasks
            .iter()
            .map(|t| {
                (
                    t.pid,
                    t.tid,
                    t.comm.as_str(),
                    t.kernel_thread,
                    t.in_patched_functions
                        .iter()
                        .map(|h| (h.function.as_str(), h.shown_as.as_str()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    40,
                    40,
                    "sleeper",
                    false,
                    vec![("__x64_sys_pause", "__do_sys_pause")]
                ),
                (
                    41,
                    41,
                    "plain",
                    false,
                    vec![("__x64_sys_pause", "__x64_sys_pause")]
                ),
                (
                    50,
                    52,
                    "worker",
                    true,
                    vec![("race_target_b", "race_target_b")]
                ),
                (60, 60, "other", false, vec![]),
                (70, 70, "new", false, vec![("pause_new", "pause_new")]),
            ]
        );
        let mut text = String::new();
        describe_tasks(&tasks, &mut text);
        assert!(
            text.contains("  70 new (user task), sleeping in pause_new, the patch's own code\n"),
            "{text}"
        );
        assert!(tasks[4].in_patched_functions[0].new_code);
        assert!(
            text.contains("  40 sleeper (user task), sleeping in __x64_sys_pause (__do_sys_pause on its stack), which this patch replaces\n      __do_sys_pause+0x2a/0x50\n"),
            "{text}"
        );
        assert!(
            text.contains("  50 thread 52 worker (kernel thread)"),
            "{text}"
        );
        let message = stalled_message(
            "livepatch_b",
            true,
            Duration::from_secs(5),
            &tasks,
            &Cleanup::Removed,
        );
        assert!(message.starts_with("the patching transition of livepatch_b did not finish within 5 s; 5 tasks still run the old code:\n"), "{message}");
        assert!(message.contains("the module removed"), "{message}");
        assert!(message.contains("What to do: a task sleeping"), "{message}");
        assert!(
            message.contains(" Or a kernel thread sleeping"),
            "{message}"
        );
        let unexplained = stalled_message(
            "p",
            false,
            Duration::from_secs(1),
            &tasks[3..4],
            &Cleanup::Reenabled,
        );
        assert!(
            unexplained.contains("1 task still runs the patched code:\n"),
            "{unexplained}"
        );
        assert!(
            unexplained.contains("stays loaded and enabled"),
            "{unexplained}"
        );
        assert!(
            unexplained.contains("What to do: give the tasks longer"),
            "{unexplained}"
        );
        assert!(unexplained.ends_with("then unload again."), "{unexplained}");
        assert!(message.contains("--timeout SECS"), "{message}");
    }

    #[test]
    fn no_livepatch_directory_is_a_kernel_without_livepatch_support() {
        let root = tempfile::tempdir().expect("temporary directory");
        let error = Host::under(root.path())
            .livepatches()
            .expect_err("no sysfs");
        assert!(
            error.to_string().contains("no livepatch support"),
            "{error}"
        );
    }

    #[test]
    fn unloading_what_is_not_loaded_or_not_a_livepatch_is_refused() {
        let kernel = FakeKernel::new(MODULES);
        let host = kernel.host();
        let options = Options::default();
        let error = host
            .unload("livepatch-gone.ko", &options, &mut |_| {})
            .expect_err("not loaded");
        assert_eq!(
            error.to_string(),
            "no livepatch livepatch_gone is loaded: `kpatch-rs list` shows the livepatches that are"
        );
        let error = host
            .unload("race_target", &options, &mut |_| {})
            .expect_err("not a livepatch");
        assert!(error.to_string().contains("not a livepatch"), "{error}");
    }

    #[test]
    fn a_name_is_the_kernels_module_name() {
        let host = Host::under(Path::new("/nonexistent"));
        assert_eq!(
            host.name_of("livepatch-a").ok(),
            Some("livepatch_a".to_string())
        );
        assert_eq!(
            host.name_of("livepatch_a").ok(),
            Some("livepatch_a".to_string())
        );
        assert_eq!(
            host.name_of("/missing/livepatch-a.ko").ok(),
            Some("livepatch_a".to_string())
        );
    }

    #[test]
    fn loading_a_file_that_is_no_module_says_so() {
        let kernel = FakeKernel::new(MODULES);
        kernel.write("not-a-module.ko", "text");
        let error = kernel
            .host()
            .load(
                &kernel.root.path().join("not-a-module.ko"),
                &Options::default(),
                &mut |_| {},
            )
            .expect_err("not a module");
        assert!(
            error.to_string().contains("not a 64-bit ELF file"),
            "{error}"
        );
    }
}
