#!/bin/sh
# Stacking and replacing: `a` (--no-replace) marks /proc/cmdline with [a], `b` (--no-replace)
# adds a [b] line to /proc/version on top of it, and `cumulative` (the default, atomic
# replace) carries both changes as [c] and replaces a and b in one transition.
. /cases/livepatch.sh

cmdline=$(cat /proc/cmdline)
version=$(cat /proc/version)

load a
echo "after a:"
patches
same "a: /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline [a]"
same "a: /proc/version" "$(cat /proc/version)" "$version"

load b
echo "after b:"
patches
same "a+b: /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline [a]"
same "a+b: /proc/version" "$(cat /proc/version)" "$version
[b]"

# Replacing drops a and b from sysfs once the transition is over; their modules stay loaded
# until removed.
load cumulative
wait_for patch_gone a
wait_for patch_gone b
echo "after cumulative:"
patches
same "cumulative: /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline [c]"
same "cumulative: /proc/version" "$(cat /proc/version)" "$version
[c]"
echo "replaced modules loaded: $(loaded a) $(loaded b)"
unload a
unload b

disable cumulative
echo "after disabling cumulative:"
patches
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$cmdline"
same "restored /proc/version" "$(cat /proc/version)" "$version"
unload cumulative
echo "loaded: $(loaded a) $(loaded b) $(loaded cumulative)"
