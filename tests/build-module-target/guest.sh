#!/bin/sh
# A function of a module, kobject_example (the kernel's samples/kobject/kobject-example.c, built
# out of tree here): foo_show() gains " patched by kpatch-rs" in /sys/kernel/kobject_example/foo.
# The patch reaches the module's static `foo` through a livepatch relocation, which the kernel
# applies whenever the module comes: with the module already loaded, and when it is loaded after
# the livepatch, unloaded and loaded again.
. /cases/livepatch.sh

foo=/sys/kernel/kobject_example/foo
object=$(patch_dir kobject)/kobject_example

insmod ./kobject-example.ko
echo 7 > "$foo"
same "module before the patch" "$(cat "$foo")" "7"
load kobject
same "patched while loaded" "$(cat "$foo")" "7 patched by kpatch-rs"
echo "object patched: $(cat "$object/patched")"

rmmod kobject_example
echo "object patched after the module went: $(cat "$object/patched")"
insmod ./kobject-example.ko
same "patched when loaded after the patch" "$(cat "$foo")" "0 patched by kpatch-rs"
rmmod kobject_example
insmod ./kobject-example.ko
same "patched when loaded again" "$(cat "$foo")" "0 patched by kpatch-rs"

disable kobject
same "restored" "$(cat "$foo")" "0"
unload kobject
rmmod kobject_example
echo "loaded: $(loaded kobject)"
