#!/bin/sh
# New static data and a changed function that prints it: the patch adds a read-only label and
# a counter to fs/proc/meminfo.c, and meminfo_proc_show() ends /proc/meminfo with
# "KpatchReads:    N", N counting the reads since the module was loaded.
. /cases/livepatch.sh

# The field names only: the values change from one read to the next.
fields() { cut -d: -f1 /proc/meminfo; }

original_fields=$(fields)
load meminfo
same "first read" "$(grep '^KpatchReads:' /proc/meminfo || true)" "KpatchReads:    1"
same "second read" "$(grep '^KpatchReads:' /proc/meminfo || true)" "KpatchReads:    2"
# That read was the third one; the other fields stay, in order, before the new line.
same "other fields kept" "$(fields | grep -v '^KpatchReads$')" "$original_fields"

disable meminfo
same "restored /proc/meminfo" "$(fields)" "$original_fields"
unload meminfo
echo "loaded: $(loaded meminfo)"
