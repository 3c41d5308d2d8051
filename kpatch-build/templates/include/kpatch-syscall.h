/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-syscall.h: patch a system call on x86_64, shipped by kpatch-rs with the names that
 * patches written for kpatch-build use.
 *
 * Replace SYSCALL_DEFINEn(name, ...) by KPATCH_SYSCALL_DEFINEn(name, ...) in the patched
 * source. The expansion is the kernel's own x86_64 syscall wrapper (the __x64_sys_<name> entry,
 * and __ia32_sys_<name> with IA32 emulation, around __se_sys_<name> and __do_sys_<name>), minus
 * the two parts that would add entries to tables a livepatch cannot change: the ftrace syscall
 * metadata and the error-injection list. The entry points keep their names, so the changed
 * __x64_sys_<name> is the function that gets patched.
 */
#ifndef __KPATCH_SYSCALL_H_
#define __KPATCH_SYSCALL_H_

#include <linux/syscalls.h>

#ifndef CONFIG_X86_64
#error "kpatch-syscall.h supports x86_64 only"
#endif

#define __KPATCH_SYS_STUBx(abi, name, ...)				\
	long __##abi##_##name(const struct pt_regs *regs);		\
	long __##abi##_##name(const struct pt_regs *regs)		\
	{								\
		return __se_##name(__VA_ARGS__);			\
	}

/* As in the kernel, the entry of a syscall without arguments is an alias of its body. */
#define __KPATCH_SYS_STUB0(abi, name)					\
	long __##abi##_##name(const struct pt_regs *regs);		\
	long __##abi##_##name(const struct pt_regs *regs)		\
		__alias(__do_##name);

#define __KPATCH_X64_SYS_STUBx(x, name, ...)				\
	__KPATCH_SYS_STUBx(x64, sys##name,				\
			   SC_X86_64_REGS_TO_ARGS(x, __VA_ARGS__))
#define __KPATCH_X64_SYS_STUB0(name)					\
	__KPATCH_SYS_STUB0(x64, sys_##name)

#ifdef CONFIG_IA32_EMULATION
#define __KPATCH_IA32_SYS_STUBx(x, name, ...)				\
	__KPATCH_SYS_STUBx(ia32, sys##name,				\
			   SC_IA32_REGS_TO_ARGS(x, __VA_ARGS__))
#define __KPATCH_IA32_SYS_STUB0(name)					\
	__KPATCH_SYS_STUB0(ia32, sys_##name)
#else
#define __KPATCH_IA32_SYS_STUBx(x, name, ...)
#define __KPATCH_IA32_SYS_STUB0(name)
#endif

#define __KPATCH_SYSCALL_DEFINEx(x, name, ...)				\
	static long __se_sys##name(__MAP(x,__SC_LONG,__VA_ARGS__));	\
	static inline long __do_sys##name(__MAP(x,__SC_DECL,__VA_ARGS__));\
	__KPATCH_X64_SYS_STUBx(x, name, __VA_ARGS__)			\
	__KPATCH_IA32_SYS_STUBx(x, name, __VA_ARGS__)			\
	static long __se_sys##name(__MAP(x,__SC_LONG,__VA_ARGS__))	\
	{								\
		long ret = __do_sys##name(__MAP(x,__SC_CAST,__VA_ARGS__));\
		__MAP(x,__SC_TEST,__VA_ARGS__);				\
		__PROTECT(x, ret,__MAP(x,__SC_ARGS,__VA_ARGS__));	\
		return ret;						\
	}								\
	static inline long __do_sys##name(__MAP(x,__SC_DECL,__VA_ARGS__))

#define KPATCH_SYSCALL_DEFINE0(sname)					\
	static long __do_sys_##sname(const struct pt_regs *__unused);	\
	__KPATCH_X64_SYS_STUB0(sname)					\
	__KPATCH_IA32_SYS_STUB0(sname)					\
	static long __do_sys_##sname(const struct pt_regs *__unused)

#define KPATCH_SYSCALL_DEFINEx(x, sname, ...)				\
	__KPATCH_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#define KPATCH_SYSCALL_DEFINE1(name, ...) KPATCH_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) KPATCH_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) KPATCH_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) KPATCH_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) KPATCH_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) KPATCH_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#endif /* __KPATCH_SYSCALL_H_ */
