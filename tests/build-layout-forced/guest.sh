#!/bin/sh
# What the layout check saves a kernel from. kset_example made its three foo_obj objects at
# load time with the original layout; a livepatch that adds `writes` before `foo` (built here
# with --allow-layout-change, which kpatch-rs otherwise refuses) reads and writes them with
# the new one: every member is read 4 bytes off, and the patched foo_store writes into the
# neighbours of the field it means to change. The damage outlives the patch.
. /cases/livepatch.sh

dir=/sys/kernel/kset_example/foo

insmod ./kset-example.ko
echo 7 > "$dir/foo"
echo 3 > "$dir/baz"
same "before the patch" "$(cat "$dir/foo") $(cat "$dir/baz")" "7 3"

load forced
echo "foo as the patched code reads it: $(cat "$dir/foo")"
echo 9 > "$dir/foo"
disable forced
unload forced

echo "after the patch is gone: foo $(cat "$dir/foo"), baz $(cat "$dir/baz")"
rmmod kset_example
