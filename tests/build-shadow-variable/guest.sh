#!/bin/sh
# The kernel's shadow variable API from patched code: cmdline_proc_show() counts its reads in a
# shadow variable attached to saved_command_line (klp_shadow_get_or_alloc) and prints the count;
# a post-unpatch callback from kpatch-macros.h frees the shadow variables (klp_shadow_free_all).
. /cases/livepatch.sh

original=$(cat /proc/cmdline)
load shadow
same "first read" "$(cat /proc/cmdline)" "$original reads=1"
same "second read" "$(cat /proc/cmdline)" "$original reads=2"
disable shadow
same "restored" "$(cat /proc/cmdline)" "$original"
unload shadow
echo "loaded: $(loaded shadow)"
