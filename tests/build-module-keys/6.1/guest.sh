#!/bin/sh
# Linux 6.1's version of this case. The changed keyed_call_show() makes its static call from
# the livepatch module: the module must load (no fault in static_call_del_module), patch the
# module's /proc file when the module comes after the patch, and unload cleanly. Linux 6.1
# cannot clear a module's livepatch relocations when the module goes (no
# clear_relocate_add()), so a module the patch was applied to once cannot come again while
# the patch is loaded: the kernel refuses it, and kpatch-rs build says so in a warning.
. /cases/livepatch.sh

load call
insmod ./keyed_target.ko
echo "patched when loaded after the patch: $(cat /proc/keyed_target_call)"
rmmod keyed_target
if insmod ./keyed_target.ko 2>/dev/null; then
	echo "loaded again while patched: yes"
	rmmod keyed_target
else
	echo "loaded again while patched: refused by the kernel"
fi
dmesg | grep -q "refusing to load module 'keyed_target'" && echo "kernel log: refusing to load module 'keyed_target'"
disable call
unload call
insmod ./keyed_target.ko
echo "after: $(cat /proc/keyed_target_call)"
rmmod keyed_target
echo "loaded: $(loaded call)"
