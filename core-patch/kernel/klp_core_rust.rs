// SPDX-License-Identifier: GPL-2.0
//! The kernel side of core-patch: with `CONFIG_RUST`, `klp_module_coming()` and
//! `klp_module_going()` in `kernel/livepatch/core.c` call [`klp_rust_module_coming`] and
//! [`klp_rust_module_going`], which run the algorithm of `module_notifier.rs` over the kernel's
//! own `klp_patches`, objects and `struct module`.
//!
//! `module_notifier.rs` is core-patch's `src/module_notifier.rs`, copied beside this file
//! unchanged when xtask prepares the kernel source, so the kernel runs the very text that the
//! userspace model checks. This file is only the host: every [`KlpHost`] method is one call to
//! a `klp_rs_*` helper in `core.c`, each a wrapper over what the C bodies do at the same step.
//! Kbuild compiles it as a built-in object (`no_std`, only `core`).

use core::ffi::{c_char, c_int, CStr};
use core::fmt;
use core::ptr::NonNull;

#[path = "module_notifier.rs"]
pub mod module_notifier;

use module_notifier::{Binding, Errno, Event, KlpHost};

/// The rule `klp_find_object_module()` binds by: the fix, or, in the kernel built with
/// `CONFIG_LIVEPATCH_RUST_PRE_FIX` for the race experiment, the rule from before it.
const BINDING: Binding = if cfg!(CONFIG_LIVEPATCH_RUST_PRE_FIX) {
    Binding::ModuleState
} else {
    Binding::KlpAlive
};

/// `struct module`; only C reads its fields.
#[repr(C)]
pub struct Module {
    _opaque: [u8; 0],
}

/// `struct klp_patch`; only C reads its fields.
#[repr(C)]
pub struct KlpPatch {
    _opaque: [u8; 0],
}

/// `struct klp_object`; only C reads its fields.
#[repr(C)]
pub struct KlpObject {
    _opaque: [u8; 0],
}

extern "C" {
    fn klp_rs_lock();
    fn klp_rs_unlock();
    fn klp_rs_set_alive(module: *mut Module, alive: bool);
    fn klp_rs_alive(module: *mut Module) -> bool;
    fn klp_rs_module_name(module: *mut Module) -> *const c_char;
    fn klp_rs_first_patch() -> *mut KlpPatch;
    fn klp_rs_next_patch(patch: *mut KlpPatch) -> *mut KlpPatch;
    fn klp_rs_is_transition_patch(patch: *mut KlpPatch) -> bool;
    fn klp_rs_patch_name(patch: *mut KlpPatch) -> *const c_char;
    fn klp_rs_object_named_after(patch: *mut KlpPatch, module: *mut Module) -> *mut KlpObject;
    fn klp_rs_object_bound_to(patch: *mut KlpPatch, module: *mut Module) -> *mut KlpObject;
    fn klp_rs_bind_object(object: *mut KlpObject, module: *mut Module);
    fn klp_rs_object_module(object: *mut KlpObject) -> *mut Module;
    fn klp_rs_object_patched(object: *mut KlpObject) -> bool;
    fn klp_rs_unbind_object(object: *mut KlpObject);
    fn klp_rs_init_object_loaded(patch: *mut KlpPatch, object: *mut KlpObject) -> c_int;
    fn klp_rs_clear_object_relocs(patch: *mut KlpPatch, object: *mut KlpObject);
    fn klp_rs_patch_object(object: *mut KlpObject) -> c_int;
    fn klp_rs_unpatch_object(object: *mut KlpObject);
    fn klp_rs_pre_patch_callback(object: *mut KlpObject) -> c_int;
    fn klp_rs_post_patch_callback(object: *mut KlpObject);
    fn klp_rs_pre_unpatch_callback(object: *mut KlpObject);
    fn klp_rs_post_unpatch_callback(object: *mut KlpObject);
    fn klp_rs_post_unpatch_enabled(object: *mut KlpObject) -> bool;
    fn klp_rs_set_post_unpatch_enabled(object: *mut KlpObject, enabled: bool);
    fn klp_rs_log(warn: bool, message: *const c_char, len: usize);
}

/// The running kernel as the algorithm's host. Handles are the kernel's own pointers; they
/// stay valid while `klp_mutex` is held, which the algorithm does around every use.
struct KernelHost;

/// 0 for success, the negative errno otherwise, as C expects.
fn status(code: c_int) -> Result<(), Errno> {
    if code == 0 {
        Ok(())
    } else {
        Err(code)
    }
}

/// Reads a name the kernel keeps as a C string; a name that is not UTF-8 prints as `?`
/// rather than stop the notifier.
///
/// # Safety
///
/// `name` points to a NUL-terminated string that outlives the returned reference.
unsafe fn c_name<'a>(name: *const c_char) -> &'a str {
    if name.is_null() {
        return "?";
    }
    // SAFETY: non-null, and NUL-terminated and alive per this function's contract.
    unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("?")
}

/// One kernel log line, cut at its capacity: module names are at most 55 bytes, so the
/// longest message of the notifier fits.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

impl Line {
    fn print(&self, warn: bool) {
        // SAFETY: the pointer and length describe initialised bytes of `self.bytes`; C prints
        // them with "%.*s" and keeps no reference.
        unsafe { klp_rs_log(warn, self.bytes.as_ptr().cast(), self.len) }
    }
}

// SAFETY, for every call below: the pointers are the kernel's own, handed to us by the C
// helpers or by the module loader, and `klp_mutex` is held, so the patches, objects and the
// module stay alive and unchanged by others for the duration of the call.
impl KlpHost for KernelHost {
    type Module = NonNull<Module>;
    type Patch = NonNull<KlpPatch>;
    type Object = NonNull<KlpObject>;

    fn lock_klp_mutex(&mut self) {
        // SAFETY: see above the impl; taking the mutex has no precondition.
        unsafe { klp_rs_lock() }
    }

    fn unlock_klp_mutex(&mut self) {
        // SAFETY: the algorithm took the mutex and releases it once.
        unsafe { klp_rs_unlock() }
    }

    fn set_klp_alive(&mut self, module: Self::Module, alive: bool) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_set_alive(module.as_ptr(), alive) }
    }

    fn first_patch(&self) -> Option<Self::Patch> {
        // SAFETY: see above the impl.
        NonNull::new(unsafe { klp_rs_first_patch() })
    }

    fn next_patch(&self, patch: Self::Patch) -> Option<Self::Patch> {
        // SAFETY: see above the impl.
        NonNull::new(unsafe { klp_rs_next_patch(patch.as_ptr()) })
    }

    fn is_transition_patch(&self, patch: Self::Patch) -> bool {
        // SAFETY: see above the impl.
        unsafe { klp_rs_is_transition_patch(patch.as_ptr()) }
    }

    fn object_named_after(&self, patch: Self::Patch, module: Self::Module) -> Option<Self::Object> {
        // SAFETY: see above the impl.
        NonNull::new(unsafe { klp_rs_object_named_after(patch.as_ptr(), module.as_ptr()) })
    }

    fn object_bound_to(&self, patch: Self::Patch, module: Self::Module) -> Option<Self::Object> {
        // SAFETY: see above the impl.
        NonNull::new(unsafe { klp_rs_object_bound_to(patch.as_ptr(), module.as_ptr()) })
    }

    fn bind_object(&mut self, _patch: Self::Patch, object: Self::Object, module: Self::Module) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_bind_object(object.as_ptr(), module.as_ptr()) }
    }

    fn unbind_object(&mut self, _patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_unbind_object(object.as_ptr()) }
    }

    fn init_object_loaded(
        &mut self,
        patch: Self::Patch,
        object: Self::Object,
    ) -> Result<(), Errno> {
        // SAFETY: see above the impl.
        status(unsafe { klp_rs_init_object_loaded(patch.as_ptr(), object.as_ptr()) })
    }

    fn clear_object_relocs(&mut self, patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_clear_object_relocs(patch.as_ptr(), object.as_ptr()) }
    }

    fn patch_object(&mut self, patch: Self::Patch, object: Self::Object) -> Result<(), Errno> {
        // The pre-fix experiment keeps the coming notifier of that time, as the model does
        // (see `Binding` in the model): an object that a patch enabled during COMING already
        // patched is reported and left where it is on the func_stack, and the load goes on.
        if BINDING == Binding::ModuleState {
            // SAFETY: see above the impl.
            let (patched, module) = unsafe {
                (
                    klp_rs_object_patched(object.as_ptr()),
                    NonNull::new(klp_rs_object_module(object.as_ptr())),
                )
            };
            if let (true, Some(module)) = (patched, module) {
                self.log(Event::ApplyFailed {
                    patch,
                    module,
                    errno: module_notifier::EINVAL,
                });
                return Ok(());
            }
        }
        // SAFETY: see above the impl.
        status(unsafe { klp_rs_patch_object(object.as_ptr()) })
    }

    fn unpatch_object(&mut self, _patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_unpatch_object(object.as_ptr()) }
    }

    fn pre_patch_callback(
        &mut self,
        _patch: Self::Patch,
        object: Self::Object,
    ) -> Result<(), Errno> {
        // SAFETY: see above the impl.
        status(unsafe { klp_rs_pre_patch_callback(object.as_ptr()) })
    }

    fn post_patch_callback(&mut self, _patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_post_patch_callback(object.as_ptr()) }
    }

    fn pre_unpatch_callback(&mut self, _patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_pre_unpatch_callback(object.as_ptr()) }
    }

    fn post_unpatch_callback(&mut self, _patch: Self::Patch, object: Self::Object) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_post_unpatch_callback(object.as_ptr()) }
    }

    fn post_unpatch_enabled(&self, _patch: Self::Patch, object: Self::Object) -> bool {
        // SAFETY: see above the impl.
        unsafe { klp_rs_post_unpatch_enabled(object.as_ptr()) }
    }

    fn set_post_unpatch_enabled(
        &mut self,
        _patch: Self::Patch,
        object: Self::Object,
        enabled: bool,
    ) {
        // SAFETY: see above the impl.
        unsafe { klp_rs_set_post_unpatch_enabled(object.as_ptr(), enabled) }
    }

    fn log(&mut self, event: Event<Self::Patch, Self::Module>) {
        let warn = !matches!(event, Event::Applying { .. } | Event::Reverting { .. });
        // SAFETY: see above the impl; `mod->name` and the patch module's name are arrays
        // inside modules that live while the mutex is held.
        let (patch_name, module_name) = unsafe {
            (
                c_name(klp_rs_patch_name(event.patch().as_ptr())),
                c_name(klp_rs_module_name(event.module().as_ptr())),
            )
        };
        let mut line = Line {
            bytes: [0; 256],
            len: 0,
        };
        // Line never fails; a cut message is still worth printing.
        let _ = event.write_message(&mut line, patch_name, module_name);
        line.print(warn);
    }
}

/// The body of `klp_module_coming()` once C has checked the module's state and name: applies
/// every patch that has an object for `module`. Returns 0, or the negative errno with which
/// the module must fail to load.
#[no_mangle]
pub extern "C" fn klp_rust_module_coming(module: *mut Module) -> c_int {
    let Some(module) = NonNull::new(module) else {
        return module_notifier::EINVAL;
    };
    match module_notifier::klp_module_coming(&mut KernelHost, module) {
        Ok(()) => 0,
        Err(errno) => errno,
    }
}

/// The body of `klp_module_going()` once C has checked the module's state: reverts every
/// patch from `module`.
#[no_mangle]
pub extern "C" fn klp_rust_module_going(module: *mut Module) {
    if let Some(module) = NonNull::new(module) {
        module_notifier::klp_module_going(&mut KernelHost, module);
    }
}

/// The binding rule of `klp_find_object_module()`, which C calls with `klp_mutex` held when a
/// patch being enabled finds `module` loaded: whether to bind the patch's object to it.
#[no_mangle]
pub extern "C" fn klp_rust_binds_on_enable(module: *mut Module) -> bool {
    if module.is_null() {
        return false;
    }
    // SAFETY: C found `module` with find_module() under rcu_read_lock_sched(), so it is alive.
    module_notifier::binds_on_enable(BINDING, unsafe { klp_rs_alive(module) })
}

/// Called once from `klp_init()`: says in the boot log that the Rust core is the one that
/// runs, so that a test can tell this kernel from the stock one.
#[no_mangle]
pub extern "C" fn klp_rust_core_announce() {
    let mut line = Line {
        bytes: [0; 256],
        len: 0,
    };
    let _ = fmt::Write::write_str(
        &mut line,
        match BINDING {
            Binding::KlpAlive => "module coming/going run by core-patch's Rust core (klp_alive fix)",
            Binding::ModuleState => {
                "module coming/going run by core-patch's Rust core, PRE-FIX binding rule \
                 (race experiment only)"
            }
        },
    );
    line.print(false);
}
