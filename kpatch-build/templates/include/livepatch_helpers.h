/* SPDX-License-Identifier: GPL-2.0 */
/*
 * linux/livepatch_helpers.h as patches written for the kernel's klp-build include it, shipped
 * by kpatch-rs for kernels that do not have the header (before 6.19): the KLP_ names are the
 * kpatch-macros.h and kpatch-syscall.h macros under klp-build's spelling. On a kernel that has
 * its own header, the kernel's is found first.
 */
#ifndef _LINUX_LIVEPATCH_HELPERS_H
#define _LINUX_LIVEPATCH_HELPERS_H

#include "../kpatch-macros.h"
#include "../kpatch-syscall.h"

#define KLP_PRE_PATCH_CALLBACK(func)	KPATCH_PRE_PATCH_CALLBACK(func)
#define KLP_POST_PATCH_CALLBACK(func)	KPATCH_POST_PATCH_CALLBACK(func)
#define KLP_PRE_UNPATCH_CALLBACK(func)	KPATCH_PRE_UNPATCH_CALLBACK(func)
#define KLP_POST_UNPATCH_CALLBACK(func)	KPATCH_POST_UNPATCH_CALLBACK(func)

#define KLP_SYSCALL_DEFINE0(name)	KPATCH_SYSCALL_DEFINE0(name)
#define KLP_SYSCALL_DEFINE1(name, ...)	KPATCH_SYSCALL_DEFINE1(name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE2(name, ...)	KPATCH_SYSCALL_DEFINE2(name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE3(name, ...)	KPATCH_SYSCALL_DEFINE3(name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE4(name, ...)	KPATCH_SYSCALL_DEFINE4(name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE5(name, ...)	KPATCH_SYSCALL_DEFINE5(name, __VA_ARGS__)
#define KLP_SYSCALL_DEFINE6(name, ...)	KPATCH_SYSCALL_DEFINE6(name, __VA_ARGS__)

#define KLP_STATIC_CALL(name)		KPATCH_STATIC_CALL(name)

#endif /* _LINUX_LIVEPATCH_HELPERS_H */
