#!/bin/sh
# Linux 6.1's version of this case: foo_show() of kobject_example gains " patched by
# kpatch-rs", through a livepatch relocation to the module's static `foo` that the kernel
# applies when the module comes, loaded before or after the livepatch. Linux 6.1 cannot
# clear those relocations when the module goes (no clear_relocate_add()), so once unloaded,
# the module cannot come again while the patch is loaded: the kernel refuses it (kpatch-rs
# build warns), and after the patch is removed it loads unpatched.
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
if insmod ./kobject-example.ko 2>/dev/null; then
	echo "loaded again while patched: yes"
	rmmod kobject_example
else
	echo "loaded again while patched: refused by the kernel"
fi
dmesg | grep -q "refusing to load module 'kobject_example'" && echo "kernel log: refusing to load module 'kobject_example'"

disable kobject
unload kobject
insmod ./kobject-example.ko
same "unpatched after the patch is gone" "$(cat "$foo")" "0"
rmmod kobject_example
echo "loaded: $(loaded kobject)"
