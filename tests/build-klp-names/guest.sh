#!/bin/sh
# A patch written with klp-build's names: the changed cmdline_proc_show() appends
# " klp-names", and the KLP_POST_PATCH_CALLBACK callback logs one line when the patch is
# enabled.
. /cases/livepatch.sh

original=$(cat /proc/cmdline)
load klp
same "patched /proc/cmdline" "$(cat /proc/cmdline)" "$original klp-names"
if dmesg | grep -q 'kpatch-rs: klp post-patch callback ran'; then
	echo "post-patch callback: ran"
else
	echo "post-patch callback: did not run"
fi
disable klp
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload klp
echo "loaded: $(loaded klp)"
