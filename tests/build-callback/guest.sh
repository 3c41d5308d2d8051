#!/bin/sh
# The four callbacks of kpatch-macros.h. `callback` registers all of them, each logging one
# line; the changed cmdline_proc_show() appends " callback". Enabling runs pre-patch then
# post-patch, disabling runs pre-unpatch then post-unpatch. `refuse` has a pre-patch callback
# that fails: its load must fail and leave /proc/cmdline as it was.
. /cases/livepatch.sh

# callbacks: the callbacks that ran so far, in the order of the kernel log.
callbacks() {
	dmesg | grep -o 'kpatch-rs: [a-z-]* callback ran' | sed 's/kpatch-rs: //; s/ callback ran//' |
		tr '\n' ' '
}

original=$(cat /proc/cmdline)
load callback
echo "after enable: $(callbacks)"
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$original callback"

disable callback
echo "after disable: $(callbacks)"
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload callback
echo "loaded: $(loaded callback)"

if insmod ./livepatch-refuse.ko 2>/dev/null; then
	echo "refuse: insmod succeeded"
else
	echo "refuse: insmod failed"
fi
# busybox insmod tries init_module() again when finit_module() fails, so the callback may run
# twice: what counts is that it ran, that the kernel says so, and that nothing stayed behind.
ran() { if dmesg | grep -q "$1"; then echo yes; else echo no; fi; }
echo "refusing callback ran: $(ran 'kpatch-rs: pre-patch callback refuses')"
echo "kernel reports the refusal: $(ran "livepatch: pre-patch callback failed for object 'vmlinux'")"
same "/proc/cmdline after the refusal" "$(cat /proc/cmdline)" "$original"
echo "refuse loaded: $(loaded refuse)"
if patch_gone refuse; then echo "refuse in sysfs: no"; else echo "refuse in sysfs: yes"; fi
