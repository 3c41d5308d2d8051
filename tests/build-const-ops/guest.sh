#!/bin/sh
# An unchanged const ops table stays the kernel's. The patch changes pidfs_init_inode(), which
# sets every new pidfd inode's file operations to pidfs_file_operations; unchanged
# pidfd_send_signal() refuses any file whose f_op is another table (EBADF). A module holding
# its own copy of the table would make every pidfd opened while it is loaded unusable.
. /cases/livepatch.sh

echo "before:"
./pidfd-check
load pidfs
echo "patched:"
./pidfd-check
disable pidfs
unload pidfs
echo "after:"
./pidfd-check
echo "loaded: $(loaded pidfs)"
