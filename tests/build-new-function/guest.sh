#!/bin/sh
# A new function called by a changed one: version_proc_show() calls version_show_note(), which
# vmlinux does not have, and /proc/version gains a second line.
. /cases/livepatch.sh

original=$(cat /proc/version)
load version
same "patched /proc/version" "$(cat /proc/version)" "$original
kpatch-rs: printed by a new function"

disable version
same "restored /proc/version" "$(cat /proc/version)" "$original"
unload version
echo "loaded: $(loaded version)"
