#!/bin/sh
# A static local variable in a changed function: version_proc_show() counts its calls in a
# new `static unsigned int reads` and prints the count under the banner. The counter lives in
# the module, so loading the module again starts it over.
. /cases/livepatch.sh

original=$(cat /proc/version)
reads() { tail -n 1 /proc/version; }

load version
same "banner kept" "$(head -n 1 /proc/version)" "$original"
# The read above was the first.
same "second read" "$(reads)" "version reads: 2"
same "third read" "$(reads)" "version reads: 3"
disable version
same "restored /proc/version" "$(cat /proc/version)" "$original"
unload version

load version
same "counter starts over with the module" "$(reads)" "version reads: 1"
disable version
unload version
echo "loaded: $(loaded version)"
