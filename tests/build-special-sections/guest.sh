#!/bin/sh
# Special sections in a changed function: cmdline_proc_show() gains a WARN_ON that never fires
# (a __bug_table entry), a pr_debug (a __dyndbg descriptor and its static key) and a branch on
# a new static key that stays off (a __jump_table entry). /proc/cmdline ends with " checked";
# the pr_debug prints once enabled through dynamic debug, and stops when disabled.
. /cases/livepatch.sh

control=/sys/kernel/debug/dynamic_debug/control
message='kpatch-rs: cmdline read'
printed() { dmesg | grep -c "$message" || true; }

original=$(cat /proc/cmdline)
load special
# The static key is off: no "verbose: " prefix.
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$original checked"
echo "pr_debug sites: $(grep -c "$message" "$control" || true)"
echo "printed while off: $(printed)"

echo 'func cmdline_proc_show +p' > "$control"
cat /proc/cmdline > /dev/null
echo "printed when on: $(printed)"
echo 'func cmdline_proc_show -p' > "$control"
cat /proc/cmdline > /dev/null
echo "printed when off again: $(printed)"

disable special
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload special
echo "pr_debug sites after unload: $(grep -c "$message" "$control" || true)"
echo "loaded: $(loaded special)"
