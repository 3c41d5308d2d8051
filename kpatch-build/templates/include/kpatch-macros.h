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

#endif /* __KPATCH_MACROS_H_ */
