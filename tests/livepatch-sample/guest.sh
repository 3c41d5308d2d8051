#!/bin/sh
# The kernel's livepatch sample replaces cmdline_proc_show(): while the patch is enabled,
# /proc/cmdline reads "this has been live patched"; once it is disabled, the original
# command line is back.
set -eu

sysfs=/sys/kernel/livepatch/livepatch_sample

# wait_for CONDITION...: retries a test for up to 30 seconds (transitions are asynchronous).
wait_for() {
	tries=300
	until "$@"; do
		tries=$((tries - 1))
		if [ "$tries" -le 0 ]; then
			echo "timed out waiting for: $*"
			exit 1
		fi
		sleep 0.1
	done
}

transition_done() { [ "$(cat "$sysfs/transition")" = 0 ]; }
patch_gone() { [ ! -e "$sysfs" ]; }

original=$(cat /proc/cmdline)
insmod ./livepatch-sample.ko
wait_for transition_done
echo "enabled: $(cat "$sysfs/enabled")"
echo "patched: $(cat /proc/cmdline)"

echo 0 > "$sysfs/enabled"
wait_for patch_gone
if [ "$(cat /proc/cmdline)" = "$original" ]; then
	echo "disabled: original command line is back"
else
	echo "disabled: /proc/cmdline still reads: $(cat /proc/cmdline)"
fi
rmmod livepatch_sample
echo "unloaded: $(grep -c '^livepatch_sample ' /proc/modules || true)"
