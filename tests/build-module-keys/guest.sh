#!/bin/sh
# The changed keyed_call_show() makes its static call from the livepatch module: the module
# must load (no fault in static_call_del_module, no "existing value is nonzero"), patch the
# module's /proc file also when the module comes again after the patch, and unload cleanly.
. /cases/livepatch.sh

insmod ./keyed_target.ko
echo "before: $(cat /proc/keyed_target_call)"
load call
echo "patched: $(cat /proc/keyed_target_call)"
rmmod keyed_target
insmod ./keyed_target.ko
echo "patched when loaded again: $(cat /proc/keyed_target_call)"
disable call
unload call
echo "after: $(cat /proc/keyed_target_call)"
rmmod keyed_target
echo "loaded: $(loaded call)"
