#!/bin/sh
# An out-of-tree module (module/kpatch-oot-demo.c, built against the kernel under test) patched
# by `kpatch-rs build --oot-module kpatch-oot-demo.ko --oot-module-src module/`:
# oot_demo_show() says "patched by kpatch-rs" in /proc/kpatch_oot_demo while the livepatch is
# enabled, and counts its reads in the module's own static `reads`, which the patched code
# reaches through a livepatch relocation: the count goes on across patching and unpatching.
. /cases/livepatch.sh

demo=/proc/kpatch_oot_demo

insmod ./kpatch-oot-demo.ko
same "module before the patch" "$(cat "$demo")" "original, read 1"
load oot
same "patched" "$(cat "$demo")" "patched by kpatch-rs, read 2"
same "patched, again" "$(cat "$demo")" "patched by kpatch-rs, read 3"
echo "object patched: $(cat "$(patch_dir oot)/kpatch_oot_demo/patched")"
patches

disable oot
same "restored" "$(cat "$demo")" "original, read 4"
unload oot
rmmod kpatch_oot_demo
echo "loaded: $(loaded oot)"
patches
