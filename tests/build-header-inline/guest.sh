#!/bin/sh
# An inline function in a header used by two translation units: the patch adds
# proc_show_kpatch_mark() to fs/proc/internal.h (included by 21 objects of fs/proc) and calls
# it from fs/proc/cmdline.c and fs/proc/version.c; one module patches both functions.
. /cases/livepatch.sh

cmdline=$(cat /proc/cmdline)
version=$(cat /proc/version)
load inline
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline
kpatch-rs inline: cmdline"
same "patched /proc/version" "$(cat /proc/version)" "$version
kpatch-rs inline: version"

disable inline
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline"
same "restored /proc/version" "$(cat /proc/version)" "$version"
unload inline
echo "loaded: $(loaded inline)"
