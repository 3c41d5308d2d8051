//! The livepatch core's module notifier: what happens to livepatches when a module comes and
//! goes, with the `klp_alive` fix ("livepatch: Fix subtle race with coming and going modules").
//!
//! This file is the algorithm, written once. It uses only `core` and the [`KlpHost`] trait, so
//! the same text is compiled into the userspace model (through `lib.rs`) and, by path, into a
//! Kbuild Rust object where the host is the kernel's own `struct module`, `klp_patches` and
//! ftrace ops. It allocates nothing and never panics.
//!
//! The rules it carries, from Linux 6.12 `kernel/livepatch/core.c`:
//! - [`klp_module_coming`] runs under `klp_mutex` after the module turned COMING (and so became
//!   visible to `find_module()`), before its `init()`. It sets `klp_alive` first, then applies
//!   every patch in `klp_patches` order. Doing both under the lock is what keeps `func_stack`
//!   order equal to `klp_patches` order: a patch enabled earlier in COMING saw `klp_alive`
//!   false and left the module alone, so this loop is the only place the module gets patched.
//! - [`klp_module_going`] runs under `klp_mutex` after `exit()`. It clears `klp_alive` first, so
//!   a patch enabled afterwards, while the module is still visible as GOING, no longer binds an
//!   object to a module that is about to be freed.

/// The rule by which enabling a patch binds one of its objects to a module that
/// `find_module()` finds (`klp_find_object_module()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// The fix: only while `mod->klp_alive` is set, from the coming hook to the going hook.
    KlpAlive,
    /// Before the fix: whenever `find_module()` finds the module, COMING, LIVE or GOING. Only
    /// for the experiments that show what the fix prevents.
    ModuleState,
}

/// Whether enabling a patch binds an object to a module that `find_module()` found, whose
/// `klp_alive` is `klp_alive`, under `binding`.
pub fn binds_on_enable(binding: Binding, klp_alive: bool) -> bool {
    match binding {
        Binding::KlpAlive => klp_alive,
        Binding::ModuleState => true,
    }
}

/// A kernel error number as the kernel returns it: negative, e.g. `-19` for `-ENODEV`.
pub type Errno = i32;

/// `-EINVAL`, returned when the host finds the module or object in a state it cannot handle.
pub const EINVAL: Errno = -22;

/// What the notifier reports, as the kernel's `pr_notice`/`pr_warn` lines in `core.c`.
///
/// The text is fixed here, once, so that the model and the kernel print the same lines; the
/// host supplies only the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<P, M> {
    /// `applying patch '<patch>' to loading module '<module>'` (notice).
    Applying {
        /// The patch being applied.
        patch: P,
        /// The module that is coming.
        module: M,
    },
    /// `failed to initialize patch '<patch>' for module '<module>' (<errno>)` (warning).
    InitFailed {
        /// The patch whose object could not be initialised.
        patch: P,
        /// The module that is coming.
        module: M,
        /// The error the host returned.
        errno: Errno,
    },
    /// `pre-patch callback failed for object '<module>'` (warning).
    PrePatchFailed {
        /// The patch whose callback failed.
        patch: P,
        /// The module the object is named after.
        module: M,
    },
    /// `failed to apply patch '<patch>' to module '<module>' (<errno>)` (warning).
    ApplyFailed {
        /// The patch that could not be applied.
        patch: P,
        /// The module that is coming.
        module: M,
        /// The error the host returned.
        errno: Errno,
    },
    /// `patch '<patch>' failed for module '<module>', refusing to load module '<module>'`
    /// (warning).
    RefusingToLoad {
        /// The patch that failed.
        patch: P,
        /// The module whose load fails.
        module: M,
    },
    /// `reverting patch '<patch>' on unloading module '<module>'` (notice).
    Reverting {
        /// The patch being reverted from the module.
        patch: P,
        /// The module that is going.
        module: M,
    },
}

impl<P, M> Event<P, M> {
    /// Writes the kernel's message for this event, without the `livepatch: ` prefix and newline
    /// that `pr_fmt` and `pr_*` add, given the names of the patch module and the target module.
    pub fn write_message(
        &self,
        out: &mut dyn core::fmt::Write,
        patch_name: &str,
        module_name: &str,
    ) -> core::fmt::Result {
        match self {
            Event::Applying { .. } => write!(
                out,
                "applying patch '{patch_name}' to loading module '{module_name}'"
            ),
            Event::InitFailed { errno, .. } => write!(
                out,
                "failed to initialize patch '{patch_name}' for module '{module_name}' ({errno})"
            ),
            Event::PrePatchFailed { .. } => {
                write!(out, "pre-patch callback failed for object '{module_name}'")
            }
            Event::ApplyFailed { errno, .. } => write!(
                out,
                "failed to apply patch '{patch_name}' to module '{module_name}' ({errno})"
            ),
            Event::RefusingToLoad { .. } => write!(
                out,
                "patch '{patch_name}' failed for module '{module_name}', refusing to load module '{module_name}'"
            ),
            Event::Reverting { .. } => write!(
                out,
                "reverting patch '{patch_name}' on unloading module '{module_name}'"
            ),
        }
    }

    /// The patch the event is about.
    pub fn patch(&self) -> &P {
        match self {
            Event::Applying { patch, .. }
            | Event::InitFailed { patch, .. }
            | Event::PrePatchFailed { patch, .. }
            | Event::ApplyFailed { patch, .. }
            | Event::RefusingToLoad { patch, .. }
            | Event::Reverting { patch, .. } => patch,
        }
    }

    /// The module the event is about.
    pub fn module(&self) -> &M {
        match self {
            Event::Applying { module, .. }
            | Event::InitFailed { module, .. }
            | Event::PrePatchFailed { module, .. }
            | Event::ApplyFailed { module, .. }
            | Event::RefusingToLoad { module, .. }
            | Event::Reverting { module, .. } => module,
        }
    }
}

/// What the notifier needs from the kernel (or from the model that stands in for it).
///
/// Handles are small copyable values (pointers in the kernel, indices in the model). Every
/// method is called with `klp_mutex` held, taken through [`KlpHost::lock_klp_mutex`].
pub trait KlpHost {
    /// A module (`struct module *`).
    type Module: Copy;
    /// A patch on `klp_patches` (`struct klp_patch *`).
    type Patch: Copy + PartialEq;
    /// An object of a patch (`struct klp_object *`).
    type Object: Copy;

    /// Takes `klp_mutex`.
    fn lock_klp_mutex(&mut self);
    /// Releases `klp_mutex`.
    fn unlock_klp_mutex(&mut self);

    /// Sets `mod->klp_alive`.
    fn set_klp_alive(&mut self, module: Self::Module, alive: bool);

    /// The first patch on `klp_patches`, if any.
    fn first_patch(&self) -> Option<Self::Patch>;
    /// The patch after `patch` on `klp_patches`, if any.
    fn next_patch(&self, patch: Self::Patch) -> Option<Self::Patch>;
    /// Whether `patch` is `klp_transition_patch`.
    fn is_transition_patch(&self, patch: Self::Patch) -> bool;

    /// The first object of `patch` that is named after `module` (vmlinux objects never are).
    fn object_named_after(&self, patch: Self::Patch, module: Self::Module) -> Option<Self::Object>;
    /// The object of `patch` bound to `module` (`obj->mod == mod`), if any.
    fn object_bound_to(&self, patch: Self::Patch, module: Self::Module) -> Option<Self::Object>;
    /// Binds `object` to `module` (`obj->mod = mod`).
    fn bind_object(&mut self, patch: Self::Patch, object: Self::Object, module: Self::Module);
    /// Clears the binding and the resolved function addresses (`klp_free_object_loaded()`).
    fn unbind_object(&mut self, patch: Self::Patch, object: Self::Object);

    /// Applies the object's livepatch relocations and resolves its functions' old addresses
    /// (`klp_init_object_loaded()`).
    fn init_object_loaded(&mut self, patch: Self::Patch, object: Self::Object)
        -> Result<(), Errno>;
    /// Clears the object's livepatch relocations (`klp_clear_object_relocs()`).
    fn clear_object_relocs(&mut self, patch: Self::Patch, object: Self::Object);

    /// Patches the object: pushes each of its functions onto its `func_stack`
    /// (`klp_patch_object()`).
    fn patch_object(&mut self, patch: Self::Patch, object: Self::Object) -> Result<(), Errno>;
    /// Unpatches the object: pops each of its patched functions from its `func_stack`
    /// (`klp_unpatch_object()`).
    fn unpatch_object(&mut self, patch: Self::Patch, object: Self::Object);

    /// Runs the object's pre-patch callback, if it has one; `Ok(())` when it has none.
    fn pre_patch_callback(&mut self, patch: Self::Patch, object: Self::Object)
        -> Result<(), Errno>;
    /// Runs the object's post-patch callback, if it has one.
    fn post_patch_callback(&mut self, patch: Self::Patch, object: Self::Object);
    /// Runs the object's pre-unpatch callback, if it has one.
    fn pre_unpatch_callback(&mut self, patch: Self::Patch, object: Self::Object);
    /// Runs the object's post-unpatch callback, if it has one.
    fn post_unpatch_callback(&mut self, patch: Self::Patch, object: Self::Object);
    /// Reads `obj->callbacks.post_unpatch_enabled`.
    fn post_unpatch_enabled(&self, patch: Self::Patch, object: Self::Object) -> bool;
    /// Writes `obj->callbacks.post_unpatch_enabled`.
    fn set_post_unpatch_enabled(&mut self, patch: Self::Patch, object: Self::Object, enabled: bool);

    /// Prints one of the notifier's messages.
    fn log(&mut self, event: Event<Self::Patch, Self::Module>);
}

/// Runs the pre-patch callback and remembers whether the post-unpatch callback may run later
/// (`klp_pre_patch_callback()`): a post-unpatch callback pairs with a successful pre-patch.
pub fn pre_patch_callback<H: KlpHost>(
    host: &mut H,
    patch: H::Patch,
    object: H::Object,
) -> Result<(), Errno> {
    let result = host.pre_patch_callback(patch, object);
    host.set_post_unpatch_enabled(patch, object, result.is_ok());
    result
}

/// Runs the post-unpatch callback only if the pre-patch callback had succeeded, then forgets
/// that it had (`klp_post_unpatch_callback()`), so it runs at most once per pre-patch.
pub fn post_unpatch_callback<H: KlpHost>(host: &mut H, patch: H::Patch, object: H::Object) {
    if host.post_unpatch_enabled(patch, object) {
        host.post_unpatch_callback(patch, object);
    }
    host.set_post_unpatch_enabled(patch, object, false);
}

/// The module `module` is coming: the loader calls this after setting up ftrace for it and
/// before the COMING notifiers and `mod->init()` (`klp_module_coming()`).
///
/// Applies every patch that has an object named after the module, in `klp_patches` order. On
/// an error, reverts what it applied and returns the error: the module must not load.
pub fn klp_module_coming<H: KlpHost>(host: &mut H, module: H::Module) -> Result<(), Errno> {
    host.lock_klp_mutex();
    // Set before the loop and under the lock: every patch enabled from now on binds its
    // objects to this module itself, and every patch enabled before was seen by the loop.
    host.set_klp_alive(module, true);

    let mut cursor = host.first_patch();
    while let Some(patch) = cursor {
        if let Some(object) = host.object_named_after(patch, module) {
            host.bind_object(patch, object, module);
            if let Err(errno) = apply_to_coming_module(host, patch, object, module) {
                host.log(Event::RefusingToLoad { patch, module });
                host.set_klp_alive(module, false);
                host.unbind_object(patch, object);
                revert_from_module(host, module, Some(patch));
                host.unlock_klp_mutex();
                return Err(errno);
            }
        }
        cursor = host.next_patch(patch);
    }

    host.unlock_klp_mutex();
    Ok(())
}

/// The module `module` is going: the loader calls this after `mod->exit()` and the GOING
/// notifiers (`klp_module_going()`). Reverts every patch from the module.
pub fn klp_module_going<H: KlpHost>(host: &mut H, module: H::Module) {
    host.lock_klp_mutex();
    // Cleared first and under the lock: a patch enabled after this point must leave the
    // module alone although find_module() still finds it until it is freed.
    host.set_klp_alive(module, false);
    revert_from_module(host, module, None);
    host.unlock_klp_mutex();
}

/// One patch, one object, for a coming module: relocations, callbacks, `func_stack`s.
fn apply_to_coming_module<H: KlpHost>(
    host: &mut H,
    patch: H::Patch,
    object: H::Object,
    module: H::Module,
) -> Result<(), Errno> {
    if let Err(errno) = host.init_object_loaded(patch, object) {
        host.log(Event::InitFailed {
            patch,
            module,
            errno,
        });
        return Err(errno);
    }

    host.log(Event::Applying { patch, module });

    if let Err(errno) = pre_patch_callback(host, patch, object) {
        host.log(Event::PrePatchFailed { patch, module });
        return Err(errno);
    }

    if let Err(errno) = host.patch_object(patch, object) {
        host.log(Event::ApplyFailed {
            patch,
            module,
            errno,
        });
        post_unpatch_callback(host, patch, object);
        return Err(errno);
    }

    // The patch in transition runs its post-patch callbacks when the transition completes,
    // for every object loaded by then, this one included.
    if !host.is_transition_patch(patch) {
        host.post_patch_callback(patch, object);
    }
    Ok(())
}

/// Reverts the patches bound to `module`, in `klp_patches` order, stopping before `limit`
/// (`klp_cleanup_module_patches_limited()`).
fn revert_from_module<H: KlpHost>(host: &mut H, module: H::Module, limit: Option<H::Patch>) {
    let mut cursor = host.first_patch();
    while let Some(patch) = cursor {
        if Some(patch) == limit {
            break;
        }
        if let Some(object) = host.object_bound_to(patch, module) {
            // The patch in transition has not run its post-patch callbacks yet, so it does not
            // run the pre-unpatch one either.
            if !host.is_transition_patch(patch) {
                host.pre_unpatch_callback(patch, object);
            }
            host.log(Event::Reverting { patch, module });
            host.unpatch_object(patch, object);
            post_unpatch_callback(host, patch, object);
            host.clear_object_relocs(patch, object);
            host.unbind_object(patch, object);
        }
        cursor = host.next_patch(patch);
    }
}
