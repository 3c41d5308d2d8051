/* Sleeps in pause(2) until SIGUSR1 arrives, then exits 0: a user task that sleeps inside the
 * function a livepatch replaces, so that its transition waits for it. */
#include <signal.h>
#include <unistd.h>

static void woken(int signal)
{
	(void)signal;
}

int main(void)
{
	struct sigaction action = { .sa_handler = woken };

	if (sigaction(SIGUSR1, &action, 0) != 0)
		return 1;
	pause();
	return 0;
}
