#!/bin/sh
# The kernel's livepatch sample replaces cmdline_proc_show(): while the patch is enabled,
# /proc/cmdline reads "this has been live patched"; once it is disabled, the original
# command line is back. The module is livepatch-sample.ko, so the helpers call it `sample`.
. /cases/livepatch.sh

original=$(cat /proc/cmdline)
load sample
echo "enabled: $(cat "$(patch_dir sample)/enabled")"
echo "patched: $(cat /proc/cmdline)"

disable sample
if [ "$(cat /proc/cmdline)" = "$original" ]; then
	echo "disabled: original command line is back"
else
	echo "disabled: /proc/cmdline still reads: $(cat /proc/cmdline)"
fi
unload sample
echo "unloaded: $(loaded sample)"
