// SPDX-License-Identifier: GPL-2.0
/*
 * Opens a pidfd for a fresh child and uses it the way unchanged kernel code checks it:
 * pidfd_send_signal() accepts a file only if its f_op is the kernel's pidfs_file_operations.
 * Prints whether the pidfd inode is group-readable (the patch's visible effect) and whether
 * the signal call accepted the pidfd.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		pause();
		_exit(0);
	}
	int pidfd = syscall(SYS_pidfd_open, child, 0);
	if (pidfd < 0) {
		printf("pidfd_open: %s\n", strerror(errno));
		return 1;
	}
	struct stat st;
	if (fstat(pidfd, &st) != 0) {
		printf("fstat: %s\n", strerror(errno));
		return 1;
	}
	printf("group-readable: %s\n", (st.st_mode & S_IRGRP) ? "yes" : "no");
	if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0)
		printf("pidfd_send_signal: ok\n");
	else
		printf("pidfd_send_signal: %s\n", strerror(errno));
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return 0;
}
