/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-macros.h: macros for patch authors, shipped by kpatch-rs with the names and behaviour
 * that patches written for kpatch-build expect.
 *
 * A patch includes this header from the changed source file and registers livepatch callbacks
 * for the object that file belongs to (vmlinux or a module):
 *
 *	#include "kpatch-macros.h"
 *
 *	static int my_pre_patch(patch_object *obj) { ...; return 0; }
 *	KPATCH_PRE_PATCH_CALLBACK(my_pre_patch);
 *
 * Each macro records a pointer to the callback in a section of its own. kpatch-rs reads these
 * sections from the patched object, and the generated module sets the callback in the
 * klp_object's callbacks; the sections themselves do not reach the module.
 */
#ifndef __KPATCH_MACROS_H_
#define __KPATCH_MACROS_H_

#include <linux/compiler.h>
#include <linux/livepatch.h>
#include <linux/printk.h>
#include <linux/static_call.h>

typedef struct klp_object patch_object;

/* Runs before the object is patched; a non-zero return refuses the patch (or the module load). */
#define KPATCH_PRE_PATCH_CALLBACK(_fn)						\
	static int (*__kpatch_pre_patch_callback_##_fn)(patch_object *)	\
	__section(".kpatch.callbacks.pre_patch") __used = _fn

/* Runs after the object is patched. */
#define KPATCH_POST_PATCH_CALLBACK(_fn)						\
	static void (*__kpatch_post_patch_callback_##_fn)(patch_object *)	\
	__section(".kpatch.callbacks.post_patch") __used = _fn

/* Runs before the object is unpatched. */
#define KPATCH_PRE_UNPATCH_CALLBACK(_fn)					\
	static void (*__kpatch_pre_unpatch_callback_##_fn)(patch_object *)	\
	__section(".kpatch.callbacks.pre_unpatch") __used = _fn

/* Runs after the object is unpatched, if its pre-patch callback succeeded. */
#define KPATCH_POST_UNPATCH_CALLBACK(_fn)					\
	static void (*__kpatch_post_unpatch_callback_##_fn)(patch_object *)	\
	__section(".kpatch.callbacks.post_unpatch") __used = _fn

/*
 * Leaves a function alone: the diff treats it as unchanged even if it compiled differently,
 * so it is neither replaced nor copied. KPATCH_IGNORE_SECTION does the same for the function
 * in a named section (".text.f").
 */
#define KPATCH_IGNORE_FUNCTION(_fn)						\
	static void *__kpatch_ignore_func_##_fn					\
	__section(".kpatch.ignore.functions") __used = _fn

#define KPATCH_IGNORE_SECTION(_sec)						\
	static const char *__UNIQUE_ID(kpatch_ignore_section_)			\
	__section(".kpatch.ignore.sections") __used = _sec

/*
 * kpatch-build's own module checked that no task was running the function it replaced; the
 * kernel's livepatch consistency model does that for every function, so there is nothing to
 * force. The macro is accepted, and its list never reaches the module.
 */
#define KPATCH_FORCE_UNSAFE(_fn)						\
	static void *__kpatch_force_func_##_fn					\
	__section(".kpatch.force") __used = _fn

/* printk, for patches that use kpatch's name for it. */
#define KPATCH_PRINTK(_fmt, ...) printk(_fmt, ##__VA_ARGS__)

/*
 * A static call from patched code. kpatch-rs keeps the call site's entry where the kernel can
 * resolve its key while the livepatch module loads (vmlinux), and drops it where it cannot (a
 * module's key): the call then goes through the trampoline, which always calls the current
 * target. So the ordinary static_call() is right in both.
 */
#define KPATCH_STATIC_CALL(name) static_call(name)

#endif /* __KPATCH_MACROS_H_ */
