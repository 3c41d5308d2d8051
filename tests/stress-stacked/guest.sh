#!/bin/sh
# Load and stress: twenty livepatches stacked with --no-replace, then replaced by one cumulative
# patch, while the patched functions are called without pause on every CPU and the module that
# holds one of them is loaded and unloaded over and over.
#
# Level N (livepatch-levelN.ko, from level.patch) makes three functions answer N:
# cmdline_proc_show() (/proc/cmdline ends in " [N]"), getppid() (the parent's pid plus
# N * 100000) and race_target_b() of the module race_target (/proc/race_target_b prints N);
# the cumulative patch is level 21. ./stress_calls (program/stress_calls.c) calls all three
# in a loop pinned to each CPU and checks that what one task sees never goes down a level; the
# module loop makes race_target come and go, so that every level is applied to it when it
# comes and dropped when it goes, also in the middle of transitions.
. /cases/livepatch.sh

levels=$(ls livepatch-level*.ko | wc -l)
cumulative=21 # the level of cumulative.patch
cpus=$(seq 0 $(($(getconf _NPROCESSORS_ONLN) - 1)))
echo "cpus online: $(cat /sys/devices/system/cpu/online)"
rm -f /tmp/stress-stop /tmp/module-loop /tmp/module-errors /tmp/calls-* /tmp/stress-kmsg

# The whole kernel log of the stress, read as it is written: every load and unload of the
# module logs a line per patch, hundreds in all, and the runner reads only what is left in the
# log buffer at the end.
echo "stress-stacked: start" > /dev/kmsg
cat /dev/kmsg > /tmp/stress-kmsg &
kmsg_reader=$!

# The module loop: race_target in and out until /tmp/stress-stop appears; then "LOADS FAILURES"
# in /tmp/module-loop. It stops with the module out.
module_loop() {
	loads=0
	failures=0
	while [ ! -e /tmp/stress-stop ]; do
		if insmod ./race_target.ko 2>> /tmp/module-errors; then
			loads=$((loads + 1))
			sleep 0.01
			until rmmod race_target 2>> /tmp/module-errors; do
				failures=$((failures + 1))
				sleep 0.05
			done
		else
			failures=$((failures + 1))
			sleep 0.05
		fi
	done
	echo "$loads $failures" > /tmp/module-loop
}

callers=""
module_loop &
looper=$!
for cpu in $cpus; do
	./stress_calls loop "$cpu" "/tmp/calls-$cpu" &
	callers="$callers $!"
done

# stop_loops: ends the callers and the module loop and waits for them (also when the script
# stops early, so that nothing runs on into the next case).
stop_loops() {
	touch /tmp/stress-stop
	for pid in $callers; do kill -TERM "$pid" 2> /dev/null || true; done
	for pid in $callers $looper; do wait "$pid" 2> /dev/null || true; done
	callers=""
	looper=""
	kill "$kmsg_reader" 2> /dev/null || true
}
trap stop_loops EXIT

# Stack the levels one by one: each transition must finish (load waits for it and names the
# tasks it waits for if it does not), and then every function answers with the new level.
times=""
for n in $(seq 1 $levels); do
	start=$(now_ms)
	load "level$n"
	times="$times $(($(now_ms) - start))"
	same "level $n" "$(./stress_calls probe)" "cmdline $n getppid $n race_target_b $n"
done
echo "patches enabled: $(cat /sys/kernel/livepatch/*/enabled | grep -c 1)"
echo "transitions in progress: $(cat /sys/kernel/livepatch/*/transition | grep -c 1 || true)"

# The cumulative patch replaces all twenty in one transition: their sysfs directories go, their
# modules can be removed, and the cumulative patch alone is left.
start=$(now_ms)
load cumulative
cumulative_ms=$(($(now_ms) - start))
for n in $(seq 1 $levels); do wait_for patch_gone "level$n"; done
replaced_ms=$(($(now_ms) - start))
echo "after cumulative:"
patches
same "cumulative" "$(./stress_calls probe)" \
	"cmdline $cumulative getppid $cumulative race_target_b $cumulative"
for n in $(seq 1 $levels); do unload "level$n"; done
echo "level modules loaded: $(grep -c '^livepatch_level' /proc/modules || true)"

stop_loops
for cpu in $cpus; do
	same "cpu $cpu: no task saw a level go down" "$(head -n 1 "/tmp/calls-$cpu")" "ok"
	echo "cpu $cpu: last level $(sed -n 's/.*last level \([0-9]*\)$/\1/p' "/tmp/calls-$cpu")"
done
read -r loads failures < /tmp/module-loop
echo "module loop: failed loads or unloads: $failures"
[ -s /tmp/module-errors ] && sed 's/^/  /' /tmp/module-errors
echo "module loop ran during the stress: $([ "$loads" -gt 0 ] && echo yes || echo no)"
# What the kernel said from the start of the stress on (older lines are other cases').
sed -n '/stress-stacked: start/,$p' /tmp/stress-kmsg > /tmp/stress-log
log_count() { grep -c -i -E "$1" /tmp/stress-log || true; }
echo "kernel log: warnings, oopses, BUGs, call traces: $(log_count 'WARNING:|Oops|BUG:|Call Trace')"
echo "kernel log: livepatch failures: $(log_count 'livepatch.*(fail|error|unable)')"
echo "kernel log: the module came with patches applied: $([ "$(log_count 'applying patch .* to loading module')" -gt 0 ] && echo yes || echo no)"

# Back to the unpatched functions.
disable cumulative
insmod ./race_target.ko
same "restored" "$(./stress_calls probe)" "cmdline 0 getppid 0 race_target_b 0"
rmmod race_target
unload cumulative
echo "loaded: $(loaded cumulative) $(grep -c '^race_target ' /proc/modules || true)"

sorted=$(echo "$times" | tr ' ' '\n' | grep . | sort -n)
total=0
for t in $times; do total=$((total + t)); done
figure "stacked loads (insmod to transition done, ms):$times"
figure "stacked loads: min $(echo "$sorted" | head -n 1) ms, median $(echo "$sorted" | sed -n "$(((levels + 1) / 2))p") ms," \
	"max $(echo "$sorted" | tail -n 1) ms, all $levels $total ms"
figure "cumulative load: $cumulative_ms ms; all $levels replaced patches gone after $replaced_ms ms"
for cpu in $cpus; do figure "$(sed -n 2p "/tmp/calls-$cpu")"; done
figure "module loop: race_target loaded and unloaded $loads times; the kernel applied a patch" \
	"to it $(log_count 'applying patch .* to loading module') times and reverted one" \
	"$(log_count 'reverting patch .* on unloading module') times"
