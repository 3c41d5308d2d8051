#!/bin/sh
# A patched system call without arguments: kernel/sys.c's getppid is redefined with
# KPATCH_SYSCALL_DEFINE0 from kpatch-syscall.h and adds 100000 to the parent's pid. A shell
# reads its $PPID with getppid(); /proc/PID/stat gives the true parent to compare with.
. /cases/livepatch.sh

# How far the shell's $PPID is from its real parent: 0 unpatched, 100000 patched.
ppid_shift() { sh -c 'set -- $(cat /proc/$$/stat); echo $((PPID - $4))'; }

echo "before: $(ppid_shift)"
load getppid
echo "patched: $(ppid_shift)"
disable getppid
echo "restored: $(ppid_shift)"
unload getppid
echo "loaded: $(loaded getppid)"
