//! The model kernel: modules, patches, objects and per-function `func_stack`s, the livepatch
//! enable/disable path and the module loader, each step one atomic action at the granularity of
//! the kernel's locks. The coming and going hooks are not modelled here: the steps call the
//! real algorithm in [`crate::module_notifier`] through [`ModelHost`].
//!
//! What is reduced: a transition is two steps (start, under `klp_mutex` in the enable or
//! disable path; complete, under `klp_mutex` in the transition work) and its effect is only on
//! callbacks, `func_stack`s and the messages; tasks and their patch states are not modelled.
//! Atomic replace unpatches and frees the replaced patches on completion; its `nop` functions
//! are not modelled, since they never change which function is on top once it completes.
//! Livepatch relocations are a flag per object.

use std::prelude::rust_2021::*;
use std::{format, vec};

use crate::module_notifier::{self as notifier, binds_on_enable, Errno, Event, KlpHost, EINVAL};

/// `-EBUSY`: another patch is in transition.
pub const EBUSY: Errno = -16;
/// `-EEXIST`: the module is already loaded.
pub const EEXIST: Errno = -17;
/// `-ENOENT`: the module is not loaded (rmmod).
pub const ENOENT: Errno = -2;

/// A module of the scenario, by index into [`Catalog::modules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u8);

/// A patch of the scenario, by index into [`Catalog::patches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatchId(pub u8);

/// A patched function, by index into [`Catalog::functions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncId(pub u8);

/// An object of a patch, by index into [`PatchDecl::objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The patch the object belongs to.
    pub patch: PatchId,
    /// Its position in the patch's object list.
    pub index: u8,
}

/// What an object patches: vmlinux or a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The kernel image (`obj->name == NULL`).
    Vmlinux,
    /// A module, found by name with `find_module()`.
    Module(ModuleId),
}

/// A module the scenario can load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDecl {
    /// The module name (`mod->name`).
    pub name: String,
    /// What the module's `init()` prints, in order (the selftests' target modules print).
    pub init_messages: Vec<String>,
    /// What the module's `exit()` prints, in order.
    pub exit_messages: Vec<String>,
}

/// A function some patch replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncDecl {
    /// Where the original function lives.
    pub target: Target,
    /// Its name (`old_name`).
    pub name: String,
}

/// One `klp_object` of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDecl {
    /// The object's target.
    pub target: Target,
    /// The functions it replaces; may be empty, as in the selftests' callback demos.
    pub funcs: Vec<FuncId>,
}

/// A livepatch module and its `klp_patch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchDecl {
    /// The livepatch module's name (`patch->mod->name`).
    pub name: String,
    /// Atomic replace (`patch->replace`).
    pub replace: bool,
    /// Whether its objects have the four callbacks, which print as the selftests' demo does.
    pub callbacks: bool,
    /// Its objects, in order.
    pub objects: Vec<ObjectDecl>,
}

/// Everything a scenario declares: names and shapes, no state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The modules.
    pub modules: Vec<ModuleDecl>,
    /// The functions the patches replace.
    pub functions: Vec<FuncDecl>,
    /// The patches.
    pub patches: Vec<PatchDecl>,
}

impl Catalog {
    /// The module called `name`.
    pub fn module_named(&self, name: &str) -> Option<ModuleId> {
        let index = self.modules.iter().position(|m| m.name == name)?;
        Some(ModuleId(u8::try_from(index).ok()?))
    }

    /// The patch called `name`.
    pub fn patch_named(&self, name: &str) -> Option<PatchId> {
        let index = self.patches.iter().position(|p| p.name == name)?;
        Some(PatchId(u8::try_from(index).ok()?))
    }

    /// The name of a module.
    pub fn module_name(&self, module: ModuleId) -> &str {
        self.modules
            .get(usize::from(module.0))
            .map_or("?", |m| m.name.as_str())
    }

    /// The name of a patch.
    pub fn patch_name(&self, patch: PatchId) -> &str {
        self.patches
            .get(usize::from(patch.0))
            .map_or("?", |p| p.name.as_str())
    }

    /// The name of a function.
    pub fn func_name(&self, func: FuncId) -> &str {
        self.functions
            .get(usize::from(func.0))
            .map_or("?", |f| f.name.as_str())
    }

    /// The name of an object's target as the kernel prints it.
    pub fn target_name(&self, target: Target) -> &str {
        match target {
            Target::Vmlinux => "vmlinux",
            Target::Module(module) => self.module_name(module),
        }
    }

    fn object(&self, object: ObjectRef) -> Option<&ObjectDecl> {
        self.patches
            .get(usize::from(object.patch.0))?
            .objects
            .get(usize::from(object.index))
    }

    fn objects_of(&self, patch: PatchId) -> impl Iterator<Item = ObjectRef> + '_ {
        let count = self
            .patches
            .get(usize::from(patch.0))
            .map_or(0, |p| p.objects.len());
        (0..count).filter_map(move |index| {
            Some(ObjectRef {
                patch,
                index: u8::try_from(index).ok()?,
            })
        })
    }
}

// The binding rule is the algorithm's own (`module_notifier::Binding`), so that the model and
// the kernel's `klp_find_object_module()` ask the same function. Its `ModuleState` variant also
// models the coming notifier of that time where it differs from 6.12: it did not refuse the
// load when an object was already patched. Its `klp_enable_object()` warned and returned
// `-EINVAL`, the notifier logged and went on to the next patch, and so the object stayed
// patched below the ones pushed after it. That is how the founding commit's example ends with
// `b2,b1,b3`: P3 pushed `b3` while M was COMING, then the notifier pushed `b1` and `b2` on top
// and left P3 as it was. The kernel host does the same in the pre-fix experiment.
pub use crate::module_notifier::Binding;

/// A module's loader state (`enum module_state`), plus absent (never loaded, or freed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleState {
    /// Not in the module list.
    Absent,
    /// `MODULE_STATE_UNFORMED`: in the list but invisible to `find_module()`.
    Unformed,
    /// `MODULE_STATE_COMING`: visible, `init()` not run yet.
    Coming,
    /// `MODULE_STATE_LIVE`.
    Live,
    /// `MODULE_STATE_GOING`: still visible until freed.
    Going,
}

impl ModuleState {
    /// Whether `find_module()` returns the module in this state.
    pub fn visible(self) -> bool {
        matches!(self, Self::Coming | Self::Live | Self::Going)
    }

    /// The selftests' demo prints this for a module's state in its callbacks.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Absent | Self::Unformed => "[MODULE_STATE_UNFORMED] Still setting it up",
            Self::Coming => "[MODULE_STATE_COMING] Full formed, running module_init",
            Self::Live => "[MODULE_STATE_LIVE] Normal state",
            Self::Going => "[MODULE_STATE_GOING] Going away",
        }
    }

    /// The kernel's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Unformed => "UNFORMED",
            Self::Coming => "COMING",
            Self::Live => "LIVE",
            Self::Going => "GOING",
        }
    }
}

/// Whether the coming hook has run for the module's current load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookRun {
    /// Not yet.
    No,
    /// Ran and returned 0.
    Succeeded,
    /// Ran and refused the load.
    Failed,
}

/// A module's run-time record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleRecord {
    /// Loader state.
    pub state: ModuleState,
    /// `mod->klp_alive`.
    pub klp_alive: bool,
    /// History for the invariants: the coming hook of this load.
    pub coming_hook: HookRun,
    /// History for the invariants: the going hook of this load has run.
    pub going_hook_done: bool,
}

/// A `klp_object`'s run-time record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ObjectRecord {
    /// `obj->mod` is set (for vmlinux objects: the patch is initialised).
    pub bound: bool,
    /// The livepatch relocations are applied and the functions resolved.
    pub relocated: bool,
    /// `obj->patched`: its functions are on their `func_stack`s.
    pub patched: bool,
    /// `obj->callbacks.post_unpatch_enabled`.
    pub post_unpatch_enabled: bool,
    /// History for the invariants: a pre-patch callback succeeded and no post-unpatch
    /// callback has run since.
    pub pre_patched: bool,
}

/// A patch's run-time record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatchRecord {
    /// `patch->enabled`.
    pub enabled: bool,
    /// Its objects, in declaration order.
    pub objects: Vec<ObjectRecord>,
    /// What its pre-patch callbacks return (the selftests' `pre_patch_ret` parameter).
    pub pre_patch_ret: Errno,
}

/// The direction of the transition in progress (`klp_target_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionTarget {
    /// `KLP_TRANSITION_PATCHED`.
    Patched,
    /// `KLP_TRANSITION_UNPATCHED`.
    Unpatched,
}

impl TransitionTarget {
    fn word(self) -> &'static str {
        match self {
            Self::Patched => "patching",
            Self::Unpatched => "unpatching",
        }
    }
}

/// Something that must never happen, found while running a step.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A post-patch or post-unpatch callback ran without a successful pre-patch callback.
    UnpairedCallback {
        /// The object.
        object: ObjectRef,
        /// Which callback.
        callback: &'static str,
    },
    /// `klp_patch_object()` met an object that was already patched (`WARN_ON(obj->patched)`).
    PatchedTwice {
        /// The object.
        object: ObjectRef,
    },
    /// `klp_mutex` taken while held, or released while not held.
    Locking,
}

/// The whole model kernel state. Small and hashable: the explorer stores one per state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// Per module of the catalog.
    pub modules: Vec<ModuleRecord>,
    /// Per patch of the catalog.
    pub patches: Vec<PatchRecord>,
    /// `klp_patches`, in order.
    pub klp_patches: Vec<PatchId>,
    /// Per function of the catalog, its `func_stack` from bottom to top: the ftrace handler
    /// uses the last entry.
    pub func_stacks: Vec<Vec<PatchId>>,
    /// `klp_transition_patch` and `klp_target_state`.
    pub transition: Option<(PatchId, TransitionTarget)>,
    /// The first fault met, if any.
    pub fault: Option<Fault>,
}

/// An operation of a scenario actor or of the selftests' harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `insmod` of a target module: the loader from UNFORMED to LIVE.
    Load(ModuleId),
    /// `rmmod` of a target module: the loader from GOING to freed.
    Unload(ModuleId),
    /// `insmod` of a livepatch module: `klp_enable_patch()`, then the transition.
    Enable(PatchId),
    /// `echo 0 > .../enabled`: `enabled_store()`, then the transition.
    Disable(PatchId),
}

impl Op {
    /// The first step of the operation.
    pub fn first_step(self) -> Step {
        match self {
            Op::Load(_) => Step::Form,
            Op::Unload(_) => Step::Going,
            Op::Enable(_) => Step::Enable,
            Op::Disable(_) => Step::Disable,
        }
    }

    /// How the operation reads in a scenario file and in traces.
    pub fn describe(self, catalog: &Catalog) -> String {
        match self {
            Op::Load(m) => format!("load {}", catalog.module_name(m)),
            Op::Unload(m) => format!("unload {}", catalog.module_name(m)),
            Op::Enable(p) => format!("enable {}", catalog.patch_name(p)),
            Op::Disable(p) => format!("disable {}", catalog.patch_name(p)),
        }
    }
}

/// One atomic step: everything between two points where another CPU can take the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The module enters the list as UNFORMED.
    Form,
    /// `complete_formation()`: state COMING, visible to `find_module()`.
    Coming,
    /// `prepare_coming_module()`: `klp_module_coming()`.
    ComingHook,
    /// `do_init_module()`: `mod->init()`.
    Init,
    /// State LIVE.
    Live,
    /// `delete_module()`: state GOING.
    Going,
    /// `mod->exit()`.
    Exit,
    /// `klp_module_going()`.
    GoingHook,
    /// The module is freed and leaves the list.
    Free,
    /// `klp_enable_patch()`: up to the start of the patching transition.
    Enable,
    /// `enabled_store(0)`: start (or reverse) the unpatching transition.
    Disable,
    /// `klp_try_complete_transition()` when every task has switched.
    CompleteTransition,
}

impl Step {
    /// What the step does, for traces.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Form => "module enters the list, UNFORMED (invisible)",
            Step::Coming => "module state COMING (visible to find_module)",
            Step::ComingHook => "klp_module_coming()",
            Step::Init => "mod->init()",
            Step::Live => "module state LIVE",
            Step::Going => "module state GOING (still visible)",
            Step::Exit => "mod->exit()",
            Step::GoingHook => "klp_module_going()",
            Step::Free => "module freed (invisible)",
            Step::Enable => "klp_enable_patch(): start patching transition",
            Step::Disable => "enabled_store(0): start unpatching transition",
            Step::CompleteTransition => "klp_try_complete_transition(): complete",
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepResult {
    /// The operation's next step; `None` when the operation is over.
    pub next: Option<Step>,
    /// The error the operation returns to user space, if it failed.
    pub error: Option<Errno>,
}

impl StepResult {
    fn then(next: Step) -> Self {
        Self {
            next: Some(next),
            error: None,
        }
    }
    fn done() -> Self {
        Self {
            next: None,
            error: None,
        }
    }
    fn failed(errno: Errno) -> Self {
        Self {
            next: None,
            error: Some(errno),
        }
    }
}

impl Kernel {
    /// A booted kernel: no module loaded, no patch enabled.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            modules: vec![
                ModuleRecord {
                    state: ModuleState::Absent,
                    klp_alive: false,
                    coming_hook: HookRun::No,
                    going_hook_done: false,
                };
                catalog.modules.len()
            ],
            patches: catalog
                .patches
                .iter()
                .map(|p| PatchRecord {
                    enabled: false,
                    objects: vec![ObjectRecord::default(); p.objects.len()],
                    pre_patch_ret: 0,
                })
                .collect(),
            klp_patches: Vec::new(),
            func_stacks: vec![Vec::new(); catalog.functions.len()],
            transition: None,
            fault: None,
        }
    }

    /// The module's record.
    pub fn module(&self, module: ModuleId) -> Option<&ModuleRecord> {
        self.modules.get(usize::from(module.0))
    }

    /// The object's record.
    pub fn object(&self, object: ObjectRef) -> Option<&ObjectRecord> {
        self.patches
            .get(usize::from(object.patch.0))?
            .objects
            .get(usize::from(object.index))
    }

    /// Runs one step of `op` and says what comes next. `log` collects the kernel messages
    /// when given; the explorer passes `None` to stay fast.
    pub fn step(
        &mut self,
        catalog: &Catalog,
        binding: Binding,
        op: Op,
        step: Step,
        log: Option<&mut Vec<String>>,
    ) -> StepResult {
        let mut host = ModelHost {
            catalog,
            kernel: self,
            binding,
            log,
            mutex_held: false,
        };
        host.run(op, step)
    }

    /// Sets what a patch's pre-patch callbacks return (the demo's `pre_patch_ret`).
    pub fn set_pre_patch_ret(&mut self, patch: PatchId, ret: Errno) {
        if let Some(record) = self.patches.get_mut(usize::from(patch.0)) {
            record.pre_patch_ret = ret;
        }
    }
}

/// The model's [`KlpHost`]: the kernel state, the catalog, the binding rule and a log.
pub struct ModelHost<'k> {
    catalog: &'k Catalog,
    kernel: &'k mut Kernel,
    binding: Binding,
    log: Option<&'k mut Vec<String>>,
    mutex_held: bool,
}

impl std::fmt::Debug for ModelHost<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHost")
            .field("binding", &self.binding)
            .field("mutex_held", &self.mutex_held)
            .finish_non_exhaustive()
    }
}

impl ModelHost<'_> {
    fn say(&mut self, message: impl FnOnce() -> String) {
        if let Some(log) = self.log.as_deref_mut() {
            log.push(message());
        }
    }

    fn fault(&mut self, fault: Fault) {
        if self.kernel.fault.is_none() {
            self.kernel.fault = Some(fault);
        }
    }

    fn module_mut(&mut self, module: ModuleId) -> Option<&mut ModuleRecord> {
        self.kernel.modules.get_mut(usize::from(module.0))
    }

    fn object_mut(&mut self, object: ObjectRef) -> Option<&mut ObjectRecord> {
        self.kernel
            .patches
            .get_mut(usize::from(object.patch.0))?
            .objects
            .get_mut(usize::from(object.index))
    }

    fn patch_mut(&mut self, patch: PatchId) -> Option<&mut PatchRecord> {
        self.kernel.patches.get_mut(usize::from(patch.0))
    }

    fn object_target(&self, object: ObjectRef) -> Target {
        self.catalog
            .object(object)
            .map_or(Target::Vmlinux, |o| o.target)
    }

    fn is_bound(&self, object: ObjectRef) -> bool {
        self.kernel.object(object).is_some_and(|o| o.bound)
    }

    fn in_list(&self, patch: PatchId) -> bool {
        self.kernel.klp_patches.contains(&patch)
    }

    /// The selftests' demo callbacks print `<callback>: vmlinux` or
    /// `<callback>: <module> -> <state>`, prefixed by the livepatch module's name.
    fn callback_message(&mut self, object: ObjectRef, callback: &'static str) {
        let catalog = self.catalog;
        let Some(patch) = catalog.patches.get(usize::from(object.patch.0)) else {
            return;
        };
        if !patch.callbacks || self.log.is_none() {
            return;
        }
        let target = match self.object_target(object) {
            Target::Vmlinux => String::from("vmlinux"),
            Target::Module(module) => {
                let state = self
                    .kernel
                    .module(module)
                    .map_or(ModuleState::Absent, |m| m.state);
                format!("{} -> {}", catalog.module_name(module), state.describe())
            }
        };
        self.say(|| format!("{}: {callback}: {target}", patch.name));
    }

    fn run(&mut self, op: Op, step: Step) -> StepResult {
        match (op, step) {
            (Op::Load(m), Step::Form) => {
                let Some(record) = self.module_mut(m) else {
                    return StepResult::failed(ENOENT);
                };
                if record.state != ModuleState::Absent {
                    return StepResult::failed(EEXIST);
                }
                *record = ModuleRecord {
                    state: ModuleState::Unformed,
                    klp_alive: false,
                    coming_hook: HookRun::No,
                    going_hook_done: false,
                };
                StepResult::then(Step::Coming)
            }
            (Op::Load(m), Step::Coming) => {
                self.set_module_state(m, ModuleState::Coming);
                StepResult::then(Step::ComingHook)
            }
            (Op::Load(m), Step::ComingHook) => {
                let result = notifier::klp_module_coming(self, m);
                let ok = result.is_ok();
                if let Some(record) = self.module_mut(m) {
                    record.coming_hook = if ok {
                        HookRun::Succeeded
                    } else {
                        HookRun::Failed
                    };
                }
                match result {
                    Ok(()) => StepResult::then(Step::Init),
                    // load_module() jumps to bug_cleanup: GOING, no going hook, freed.
                    Err(errno) => {
                        self.set_module_state(m, ModuleState::Going);
                        StepResult {
                            next: Some(Step::Free),
                            error: Some(errno),
                        }
                    }
                }
            }
            (Op::Load(m), Step::Init) => {
                self.module_messages(m, true);
                StepResult::then(Step::Live)
            }
            (Op::Load(m), Step::Live) => {
                self.set_module_state(m, ModuleState::Live);
                StepResult::done()
            }
            (Op::Load(m), Step::Free) | (Op::Unload(m), Step::Free) => {
                if let Some(record) = self.module_mut(m) {
                    *record = ModuleRecord {
                        state: ModuleState::Absent,
                        klp_alive: false,
                        coming_hook: HookRun::No,
                        going_hook_done: false,
                    };
                }
                StepResult::done()
            }
            (Op::Unload(m), Step::Going) => {
                if self.kernel.module(m).map(|r| r.state) != Some(ModuleState::Live) {
                    return StepResult::failed(ENOENT);
                }
                self.set_module_state(m, ModuleState::Going);
                StepResult::then(Step::Exit)
            }
            (Op::Unload(m), Step::Exit) => {
                self.module_messages(m, false);
                StepResult::then(Step::GoingHook)
            }
            (Op::Unload(m), Step::GoingHook) => {
                notifier::klp_module_going(self, m);
                if let Some(record) = self.module_mut(m) {
                    record.going_hook_done = true;
                }
                StepResult::then(Step::Free)
            }
            (Op::Enable(p), Step::Enable) => match self.enable_patch(p) {
                Ok(()) => StepResult::then(Step::CompleteTransition),
                Err(errno) => StepResult::failed(errno),
            },
            (Op::Disable(p), Step::Disable) => match self.disable_patch(p) {
                Ok(()) => StepResult::then(Step::CompleteTransition),
                Err(errno) => StepResult::failed(errno),
            },
            (Op::Enable(p), Step::CompleteTransition)
            | (Op::Disable(p), Step::CompleteTransition) => {
                if self.kernel.transition.map(|(t, _)| t) == Some(p) {
                    self.lock_klp_mutex();
                    self.try_complete_transition();
                    self.unlock_klp_mutex();
                }
                StepResult::done()
            }
            // A step that does not belong to the operation: nothing happens.
            _ => StepResult::done(),
        }
    }

    fn set_module_state(&mut self, module: ModuleId, state: ModuleState) {
        if let Some(record) = self.module_mut(module) {
            record.state = state;
        }
    }

    fn module_messages(&mut self, module: ModuleId, init: bool) {
        let catalog = self.catalog;
        let Some(decl) = catalog.modules.get(usize::from(module.0)) else {
            return;
        };
        let messages = if init {
            &decl.init_messages
        } else {
            &decl.exit_messages
        };
        for message in messages {
            self.say(|| message.clone());
        }
    }

    /// `klp_enable_patch()` with `klp_init_patch()` and `__klp_enable_patch()`.
    fn enable_patch(&mut self, patch: PatchId) -> Result<(), Errno> {
        let catalog = self.catalog;
        if self.in_list(patch) {
            return Err(EINVAL);
        }
        self.lock_klp_mutex();
        // klp_init_patch(): klp_init_object() binds each object through
        // klp_find_object_module(), then the patch joins the end of klp_patches.
        for object in catalog.objects_of(patch) {
            let bind = match self.object_target(object) {
                Target::Vmlinux => true,
                Target::Module(module) => self.kernel.module(module).is_some_and(|m| {
                    m.state.visible() && binds_on_enable(self.binding, m.klp_alive)
                }),
            };
            if let Some(record) = self.object_mut(object) {
                *record = ObjectRecord {
                    bound: bind,
                    relocated: bind,
                    ..ObjectRecord::default()
                };
            }
        }
        self.kernel.klp_patches.push(patch);

        let result = self.start_patching(patch);
        if result.is_err() {
            self.free_patch(patch);
        }
        self.unlock_klp_mutex();
        result
    }

    /// `__klp_enable_patch()`.
    fn start_patching(&mut self, patch: PatchId) -> Result<(), Errno> {
        let catalog = self.catalog;
        if self.kernel.transition.is_some() {
            return Err(EBUSY);
        }
        let name = catalog.patch_name(patch);
        self.say(|| format!("livepatch: enabling patch '{name}'"));
        self.kernel.transition = Some((patch, TransitionTarget::Patched));
        self.say(|| format!("livepatch: '{name}': initializing patching transition"));

        for object in catalog.objects_of(patch) {
            if !self.is_bound(object) {
                continue;
            }
            let target = catalog.target_name(self.object_target(object));
            let failure = match notifier::pre_patch_callback(self, patch, object) {
                Err(errno) => Some((
                    errno,
                    format!("livepatch: pre-patch callback failed for object '{target}'"),
                )),
                Ok(()) => match self.patch_object(patch, object) {
                    Err(errno) => Some((
                        errno,
                        format!("livepatch: failed to patch object '{target}'"),
                    )),
                    Ok(()) => None,
                },
            };
            if let Some((errno, failure)) = failure {
                self.say(|| failure);
                self.say(|| format!("livepatch: failed to enable patch '{name}'"));
                // klp_cancel_transition().
                self.say(|| {
                    format!("livepatch: '{name}': canceling patching transition, going to unpatch")
                });
                self.kernel.transition = Some((patch, TransitionTarget::Unpatched));
                self.complete_transition();
                return Err(errno);
            }
        }

        self.say(|| format!("livepatch: '{name}': starting patching transition"));
        if let Some(record) = self.patch_mut(patch) {
            record.enabled = true;
        }
        Ok(())
    }

    /// `enabled_store()` writing 0.
    fn disable_patch(&mut self, patch: PatchId) -> Result<(), Errno> {
        self.lock_klp_mutex();
        let result = self.start_unpatching(patch);
        self.unlock_klp_mutex();
        result
    }

    fn start_unpatching(&mut self, patch: PatchId) -> Result<(), Errno> {
        let catalog = self.catalog;
        let enabled = self
            .kernel
            .patches
            .get(usize::from(patch.0))
            .is_some_and(|p| p.enabled);
        if !enabled || !self.in_list(patch) {
            return Err(EINVAL);
        }
        let name = catalog.patch_name(patch);
        if let Some((transition_patch, target)) = self.kernel.transition {
            if transition_patch != patch {
                return Err(EBUSY);
            }
            // klp_reverse_transition().
            let (from, to, reversed) = match target {
                TransitionTarget::Patched => {
                    ("patching", "unpatching", TransitionTarget::Unpatched)
                }
                TransitionTarget::Unpatched => {
                    ("unpatching", "patching", TransitionTarget::Patched)
                }
            };
            self.say(|| format!("livepatch: '{name}': reversing transition from {from} to {to}"));
            if let Some(record) = self.patch_mut(patch) {
                record.enabled = !record.enabled;
            }
            self.kernel.transition = Some((patch, reversed));
            self.say(|| {
                format!(
                    "livepatch: '{name}': starting {} transition",
                    reversed.word()
                )
            });
            return Ok(());
        }
        // __klp_disable_patch().
        self.kernel.transition = Some((patch, TransitionTarget::Unpatched));
        self.say(|| format!("livepatch: '{name}': initializing unpatching transition"));
        for object in catalog.objects_of(patch) {
            if self.kernel.object(object).is_some_and(|o| o.patched) {
                self.pre_unpatch_callback(patch, object);
            }
        }
        self.say(|| format!("livepatch: '{name}': starting unpatching transition"));
        if let Some(record) = self.patch_mut(patch) {
            record.enabled = false;
        }
        Ok(())
    }

    /// `klp_try_complete_transition()` once every task has switched.
    fn try_complete_transition(&mut self) {
        let Some((patch, _)) = self.kernel.transition else {
            return;
        };
        self.complete_transition();
        let enabled = self
            .kernel
            .patches
            .get(usize::from(patch.0))
            .is_some_and(|p| p.enabled);
        if !enabled {
            self.free_patch(patch);
        } else if self.replaces(patch) {
            // klp_free_replaced_patches_async().
            for old in self.patches_before(patch) {
                self.free_patch(old);
            }
        }
    }

    /// Whether `patch` replaces the patches before it (`klp_patch.replace`).
    fn replaces(&self, patch: PatchId) -> bool {
        self.catalog
            .patches
            .get(usize::from(patch.0))
            .is_some_and(|p| p.replace)
    }

    /// The patches before `patch` on `klp_patches`: the ones a replacing patch replaces.
    fn patches_before(&self, patch: PatchId) -> Vec<PatchId> {
        self.kernel
            .klp_patches
            .iter()
            .copied()
            .take_while(|&p| p != patch)
            .collect()
    }

    /// `klp_complete_transition()`.
    fn complete_transition(&mut self) {
        let catalog = self.catalog;
        let Some((patch, target)) = self.kernel.transition else {
            return;
        };
        let name = catalog.patch_name(patch);
        self.say(|| {
            format!(
                "livepatch: '{name}': completing {} transition",
                target.word()
            )
        });
        if self.replaces(patch) && target == TransitionTarget::Patched {
            // klp_unpatch_replaced_patches(): no callbacks for the replaced patches.
            for old in self.patches_before(patch) {
                if let Some(record) = self.patch_mut(old) {
                    record.enabled = false;
                }
                self.unpatch_objects(old);
            }
        }
        if target == TransitionTarget::Unpatched {
            self.unpatch_objects(patch);
        }
        for object in catalog.objects_of(patch) {
            if !self.is_bound(object) {
                continue;
            }
            match target {
                TransitionTarget::Patched => self.post_patch_callback(patch, object),
                TransitionTarget::Unpatched => notifier::post_unpatch_callback(self, patch, object),
            }
        }
        self.say(|| format!("livepatch: '{name}': {} complete", target.word()));
        self.kernel.transition = None;
    }

    fn unpatch_objects(&mut self, patch: PatchId) {
        let catalog = self.catalog;
        for object in catalog.objects_of(patch) {
            if self.kernel.object(object).is_some_and(|o| o.patched) {
                self.unpatch_object(patch, object);
            }
        }
    }

    /// `klp_free_patch_start()`: off `klp_patches`, objects freed.
    fn free_patch(&mut self, patch: PatchId) {
        self.kernel.klp_patches.retain(|&p| p != patch);
        if let Some(record) = self.patch_mut(patch) {
            record.enabled = false;
            for object in &mut record.objects {
                object.bound = false;
                object.relocated = false;
            }
        }
    }
}

impl KlpHost for ModelHost<'_> {
    type Module = ModuleId;
    type Patch = PatchId;
    type Object = ObjectRef;

    fn lock_klp_mutex(&mut self) {
        if self.mutex_held {
            self.fault(Fault::Locking);
        }
        self.mutex_held = true;
    }

    fn unlock_klp_mutex(&mut self) {
        if !self.mutex_held {
            self.fault(Fault::Locking);
        }
        self.mutex_held = false;
    }

    fn set_klp_alive(&mut self, module: ModuleId, alive: bool) {
        if let Some(record) = self.module_mut(module) {
            record.klp_alive = alive;
        }
    }

    fn first_patch(&self) -> Option<PatchId> {
        self.kernel.klp_patches.first().copied()
    }

    fn next_patch(&self, patch: PatchId) -> Option<PatchId> {
        let list = &self.kernel.klp_patches;
        let position = list.iter().position(|&p| p == patch)?;
        list.get(position + 1).copied()
    }

    fn is_transition_patch(&self, patch: PatchId) -> bool {
        self.kernel.transition.map(|(p, _)| p) == Some(patch)
    }

    fn object_named_after(&self, patch: PatchId, module: ModuleId) -> Option<ObjectRef> {
        self.catalog
            .objects_of(patch)
            .find(|&o| self.object_target(o) == Target::Module(module))
    }

    fn object_bound_to(&self, patch: PatchId, module: ModuleId) -> Option<ObjectRef> {
        self.catalog
            .objects_of(patch)
            .find(|&o| self.object_target(o) == Target::Module(module) && self.is_bound(o))
    }

    fn bind_object(&mut self, _patch: PatchId, object: ObjectRef, _module: ModuleId) {
        if let Some(record) = self.object_mut(object) {
            record.bound = true;
        }
    }

    fn unbind_object(&mut self, _patch: PatchId, object: ObjectRef) {
        if let Some(record) = self.object_mut(object) {
            record.bound = false;
        }
    }

    fn init_object_loaded(&mut self, _patch: PatchId, object: ObjectRef) -> Result<(), Errno> {
        if let Some(record) = self.object_mut(object) {
            record.relocated = true;
        }
        Ok(())
    }

    fn clear_object_relocs(&mut self, _patch: PatchId, object: ObjectRef) {
        if let Some(record) = self.object_mut(object) {
            record.relocated = false;
        }
    }

    fn patch_object(&mut self, patch: PatchId, object: ObjectRef) -> Result<(), Errno> {
        if self.kernel.object(object).is_some_and(|o| o.patched) {
            return match self.binding {
                // See Binding::ModuleState: klp_enable_object() of that time refused with
                // -EINVAL, and the notifier printed this and went on to the next patch.
                Binding::ModuleState => {
                    let catalog = self.catalog;
                    let target = catalog.object(object).map_or(Target::Vmlinux, |o| o.target);
                    self.say(|| {
                        format!(
                            "livepatch: failed to apply patch '{}' to module '{}' ({EINVAL})",
                            catalog.patch_name(patch),
                            catalog.target_name(target)
                        )
                    });
                    Ok(())
                }
                Binding::KlpAlive => {
                    self.fault(Fault::PatchedTwice { object });
                    Err(EINVAL)
                }
            };
        }
        let funcs = self
            .catalog
            .object(object)
            .map(|o| o.funcs.clone())
            .unwrap_or_default();
        for func in funcs {
            if let Some(stack) = self.kernel.func_stacks.get_mut(usize::from(func.0)) {
                stack.push(patch);
            }
        }
        if let Some(record) = self.object_mut(object) {
            record.patched = true;
        }
        Ok(())
    }

    fn unpatch_object(&mut self, patch: PatchId, object: ObjectRef) {
        if !self.kernel.object(object).is_some_and(|o| o.patched) {
            return;
        }
        let funcs = self
            .catalog
            .object(object)
            .map(|o| o.funcs.clone())
            .unwrap_or_default();
        for func in funcs {
            if let Some(stack) = self.kernel.func_stacks.get_mut(usize::from(func.0)) {
                // list_del_rcu(&func->stack_node): the entry leaves wherever it is.
                if let Some(position) = stack.iter().rposition(|&p| p == patch) {
                    stack.remove(position);
                }
            }
        }
        if let Some(record) = self.object_mut(object) {
            record.patched = false;
        }
    }

    fn pre_patch_callback(&mut self, patch: PatchId, object: ObjectRef) -> Result<(), Errno> {
        self.callback_message(object, "pre_patch_callback");
        let has_callbacks = self
            .catalog
            .patches
            .get(usize::from(patch.0))
            .is_some_and(|p| p.callbacks);
        let ret = if has_callbacks {
            self.kernel
                .patches
                .get(usize::from(patch.0))
                .map_or(0, |p| p.pre_patch_ret)
        } else {
            0
        };
        if let Some(record) = self.object_mut(object) {
            record.pre_patched = ret == 0;
        }
        if ret == 0 {
            Ok(())
        } else {
            Err(ret)
        }
    }

    fn post_patch_callback(&mut self, _patch: PatchId, object: ObjectRef) {
        if !self.kernel.object(object).is_some_and(|o| o.pre_patched) {
            self.fault(Fault::UnpairedCallback {
                object,
                callback: "post_patch",
            });
        }
        self.callback_message(object, "post_patch_callback");
    }

    fn pre_unpatch_callback(&mut self, _patch: PatchId, object: ObjectRef) {
        self.callback_message(object, "pre_unpatch_callback");
    }

    fn post_unpatch_callback(&mut self, _patch: PatchId, object: ObjectRef) {
        if !self.kernel.object(object).is_some_and(|o| o.pre_patched) {
            self.fault(Fault::UnpairedCallback {
                object,
                callback: "post_unpatch",
            });
        }
        if let Some(record) = self.object_mut(object) {
            record.pre_patched = false;
        }
        self.callback_message(object, "post_unpatch_callback");
    }

    fn post_unpatch_enabled(&self, _patch: PatchId, object: ObjectRef) -> bool {
        self.kernel
            .object(object)
            .is_some_and(|o| o.post_unpatch_enabled)
    }

    fn set_post_unpatch_enabled(&mut self, _patch: PatchId, object: ObjectRef, enabled: bool) {
        if let Some(record) = self.object_mut(object) {
            record.post_unpatch_enabled = enabled;
        }
    }

    fn log(&mut self, event: Event<PatchId, ModuleId>) {
        if self.log.is_none() {
            return;
        }
        let patch = self.catalog.patch_name(*event.patch());
        let module = self.catalog.module_name(*event.module());
        let mut line = String::from("livepatch: ");
        // Writing to a String cannot fail.
        let _ = event.write_message(&mut line, patch, module);
        self.say(|| line);
    }
}
