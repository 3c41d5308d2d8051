#!/bin/sh
# A patch over two units: cmdline.c's changed function calls a new global function and reads a
# new global variable that version.c, another object of the same patch, defines. Both live in
# the livepatch module and reach each other by ordinary relocations.
. /cases/livepatch.sh

original=$(cat /proc/cmdline)
load cross
same "first read" "$(cat /proc/cmdline)" "$original
kpatch-rs: read 1"
same "second read" "$(cat /proc/cmdline)" "$original
kpatch-rs: read 2"
disable cross
same "restored /proc/cmdline" "$(cat /proc/cmdline)" "$original"
unload cross
echo "loaded: $(loaded cross)"
