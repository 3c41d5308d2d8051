#!/bin/sh
# A changed vmlinux function: the patch makes cmdline_proc_show() append " kpatch-rs" to
# /proc/cmdline.
. /cases/livepatch.sh

original=$(cat /proc/cmdline)
load cmdline
echo "enabled: $(cat "$(patch_dir cmdline)/enabled")"
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$original kpatch-rs"

disable cmdline
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload cmdline
echo "loaded: $(loaded cmdline)"
