#!/bin/sh
# The loader: kpatch-rs load, list, info and unload on two stacked livepatches; a load whose
# transition a task sleeping in the patched function holds up, named, reversed and removed,
# then loaded once that task is woken; and the same modules loaded, listed and unloaded by
# Debian's kpatch script, each tool removing what the other loaded.
. /cases/livepatch.sh

# run COMMAND...: runs it and prints what it printed (pids, stack offsets and the time a
# transition took made constant) and its exit code. The "waiting" progress lines are left
# out: whether a transition is still going on at the first look is a matter of timing.
run() {
	set +e
	"$@" > /tmp/run.out 2>&1
	rc=$?
	set -e
	show /tmp/run.out "$rc"
}

# show FILE RC: what `run` prints of a command's output FILE and exit code RC.
show() {
	grep -v -e '^waiting up to' -e '^waiting (up to' -e '^transition complete' "$1" |
		sed -e "s/^  ${sleeper:-none} /  PID /" -e "s/^    ${sleeper:-none} /    PID /" \
			-e 's/+0x[0-9a-f]*\/0x[0-9a-f]*\( \[[a-z_]*\]\)\{0,1\}$/\1/' \
			-e 's/transition finished in [0-9.]* s$/transition finished/'
	echo "exit $2"
}

# sleep_in_pause: starts ./sleeper and waits until it sleeps in pause(2); its pid in $sleeper.
sleep_in_pause() {
	./sleeper &
	sleeper=$!
	wait_for sleeping
}
sleeping() { grep -q sys_pause "/proc/$sleeper/stack"; }

# wake: wakes the sleeper with SIGUSR1 and waits for it to exit.
wake() {
	kill -USR1 "$sleeper"
	wait "$sleeper"
	echo "sleeper woken: exit $?"
	sleeper=
}

in_transition() { [ "$(cat "$(patch_dir "$1")/transition" 2>/dev/null)" = 1 ]; }

# info_summary MODULE.ko: what `kpatch-rs info` says of the module without the parts that
# change with every build of it (relocation offsets, the kernel's version string).
info_summary() {
	kpatch-rs info "$1" | grep -E '^(module|patch from|object|  function|livepatch_|  vmlinux)' |
		sed 's/, built for .*//'
}

cmdline=$(cat /proc/cmdline)

echo "== kpatch-rs: two stacked patches"
run kpatch-rs load livepatch-a.ko
run kpatch-rs load ./livepatch-b.ko
same "/proc/cmdline" "$(cat /proc/cmdline)" "$cmdline kpatch-rs"
echo "meminfo: $(grep -c '^Livepatched:' /proc/meminfo)"
run kpatch-rs list
kpatch-rs list --json > /tmp/list.json
grep -E '^      "(name|in_sysfs|enabled|transition|stack_order)"' /tmp/list.json
run kpatch-rs load livepatch-a.ko

echo "== kpatch-rs info"
info_summary livepatch-a.ko
run kpatch-rs info livepatch_b
info_summary livepatch-pause.ko
kpatch-rs info --json livepatch-b.ko | grep -E '^  "name"|"stack_order"'

echo "== kpatch-rs: a transition held up by a task sleeping in the patched function"
sleep_in_pause
# `list` while the transition waits: the kernel retries every second, so after two seconds
# only the sleeper is left on the old code.
kpatch-rs load --timeout 10 livepatch-pause.ko > /tmp/load.out 2>&1 &
loader=$!
wait_for in_transition pause
sleep 2
run kpatch-rs list
set +e
wait "$loader"
rc=$?
set -e
show /tmp/load.out "$rc"
echo "after the stalled load:"
patches
echo "pause module loaded: $(loaded pause)"
wake
run kpatch-rs load --timeout 30 livepatch-pause.ko
run kpatch-rs list

echo "== kpatch-rs: an unpatching transition held up by a task in the patch's own code"
sleep_in_pause
run kpatch-rs unload --timeout 5 livepatch_pause
patches
wake

echo "== kpatch-rs unload"
run kpatch-rs unload livepatch_pause
run kpatch-rs unload ./livepatch-b.ko
run kpatch-rs unload livepatch-a
run kpatch-rs unload livepatch-a
run kpatch-rs list
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline"

echo "== Debian's kpatch"
run kpatch load livepatch-a.ko
run kpatch load livepatch-b.ko
run kpatch list
run kpatch-rs list
run kpatch unload livepatch_b
run kpatch-rs unload livepatch_a
echo "== kpatch-rs loads, Debian's kpatch unloads"
run kpatch-rs load livepatch-b.ko
run kpatch list
run kpatch unload livepatch-b.ko
patches
echo "loaded: $(loaded a) $(loaded b) $(loaded pause)"
