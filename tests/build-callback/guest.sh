#!/bin/sh
# A post-patch callback registered with KPATCH_POST_PATCH_CALLBACK (kpatch-macros.h): it logs
# one line once vmlinux is patched; the changed cmdline_proc_show() appends " callback".
. /scenarios/livepatch.sh

message='kpatch-rs: post-patch callback ran'
original=$(cat /proc/cmdline)
load callback
echo "callback lines: $(dmesg | grep -c "$message" || true)"
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$original callback"

disable callback
echo "callback lines after disable: $(dmesg | grep -c "$message" || true)"
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload callback
echo "loaded: $(loaded callback)"
