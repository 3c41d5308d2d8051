#!/bin/sh
# A patched system call: kernel/sys.c's newuname is redefined with KPATCH_SYSCALL_DEFINE1 from
# kpatch-syscall.h and reports the machine as "kpatched"; busybox's uname calls it.
. /cases/livepatch.sh

machine=$(uname -m)
release=$(uname -r)
load uname
same "patched uname -m" "$(uname -m)" "kpatched"
same "uname -r kept" "$(uname -r)" "$release"

disable uname
same "restored uname -m" "$(uname -m)" "$machine"
unload uname
echo "loaded: $(loaded uname)"
