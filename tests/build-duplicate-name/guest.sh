#!/bin/sh
# A changed function whose name vmlinux has twice: fs/proc/consoles.c's c_start() (the patched
# one) and arch/x86/kernel/cpu/proc.c's c_start() (for /proc/cpuinfo). The patch makes
# /proc/consoles start with a header line; /proc/cpuinfo must not change.
. /cases/livepatch.sh

consoles=$(cat /proc/consoles)
cpuinfo=$(cat /proc/cpuinfo)
load consoles
same "patched /proc/consoles" "$(cat /proc/consoles)" "# consoles, listed by a patched c_start
$consoles"
same "/proc/cpuinfo kept" "$(cat /proc/cpuinfo)" "$cpuinfo"

disable consoles
same "restored /proc/consoles" "$(cat /proc/consoles)" "$consoles"
unload consoles
echo "loaded: $(loaded consoles)"
