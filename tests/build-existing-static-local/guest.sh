#!/bin/sh
# A changed function with an existing static local variable: show_interrupts() keeps the
# width of its first column in `static int prec`. The patched copy marks the header line of
# /proc/interrupts with "kpatch-rs" and goes on using vmlinux's prec (the module resolves
# prec.0 when it loads), so the lines below the header keep their layout.
. /cases/livepatch.sh

# The first column of every line but the header: IRQ numbers and names, padded to prec
# characters (the counts after the colon change from one read to the next).
first_column() { tail -n +2 /proc/interrupts | cut -d: -f1; }

header=$(head -n 1 /proc/interrupts)
column=$(first_column)
load interrupts
same "patched header" "$(head -n 1 /proc/interrupts)" "${header}kpatch-rs"
same "first column kept" "$(first_column)" "$column"

disable interrupts
same "restored header" "$(head -n 1 /proc/interrupts)" "$header"
unload interrupts
echo "loaded: $(loaded interrupts)"
