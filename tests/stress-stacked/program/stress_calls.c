// SPDX-License-Identifier: GPL-2.0
/*
 * Calls the three functions every level of the stress patches replaces, and reads which level
 * answered each call:
 *   cmdline_proc_show()  /proc/cmdline ends in " [N]" (no mark: level 0),
 *   getppid()            the parent's pid plus N * 100000,
 *   race_target_b()      /proc/race_target_b prints N (absent while the module is out).
 *
 * usage: stress_calls loop CPU RESULT   pinned to CPU, calls all three again and again until
 *                                       SIGTERM, then writes RESULT: "ok" or what went wrong,
 *                                       and a line of counts
 *        stress_calls probe             prints "cmdline N getppid N race_target_b N" once,
 *                                       waiting up to 20 s for the module to be loaded
 *
 * The livepatch consistency model switches a task from one level to the next at once, for
 * every function, and a transition that patches never takes a task back. So in one task the
 * levels it sees, call after call and whatever the function, never go down: the loop checks
 * exactly that, and that every answer is a level (0 to MAX_LEVEL).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_LEVEL 21
#define PPID_STEP 100000

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

/* Reads a small file into buf; the length read, or -1 (errno set) when it cannot be read. */
static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	int saved = errno;
	close(fd);
	if (n < 0) {
		errno = saved;
		return -1;
	}
	buf[n] = '\0';
	return (int)n;
}

/* The level that cmdline_proc_show() answered with: N from a trailing " [N]", else 0. */
static int cmdline_level(void)
{
	char buf[4096];
	int n = read_file("/proc/cmdline", buf, sizeof(buf));
	if (n <= 0)
		return -1;
	if (buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (n < 3 || buf[n - 1] != ']')
		return 0;
	char *open = strrchr(buf, '[');
	if (!open || open == buf || open[-1] != ' ')
		return 0;
	char *end;
	long level = strtol(open + 1, &end, 10);
	return (end == buf + n - 1 && end != open + 1) ? (int)level : -1;
}

/* The parent's pid as /proc/self/stat gives it (unpatched code). */
static long real_ppid(void)
{
	char buf[1024];
	if (read_file("/proc/self/stat", buf, sizeof(buf)) <= 0)
		return -1;
	/* pid (comm) state ppid ...: comm may hold spaces, so start after its last ')'. */
	char *close = strrchr(buf, ')');
	char state;
	long ppid;
	if (!close || sscanf(close + 1, " %c %ld", &state, &ppid) != 2)
		return -1;
	return ppid;
}

/* The level that getppid() answered with, or -1 when its answer is no level's. */
static int getppid_level(long parent)
{
	long shifted = syscall(SYS_getppid) - parent;
	if (shifted < 0 || shifted % PPID_STEP != 0)
		return -1;
	return (int)(shifted / PPID_STEP);
}

/* The level that race_target_b() answered with; -2 when the module is not loaded. */
static int module_level(void)
{
	char buf[64];
	if (read_file("/proc/race_target_b", buf, sizeof(buf)) <= 0)
		return -2;
	char *end;
	long level = strtol(buf, &end, 10);
	return (end != buf && *end == '\n') ? (int)level : -1;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int probe(void)
{
	long parent = real_ppid();
	int cmdline = cmdline_level();
	int ppid = getppid_level(parent);
	int module = module_level();
	for (long deadline = now_ms() + 20000; module == -2 && now_ms() < deadline;) {
		usleep(1000);
		module = module_level();
	}
	printf("cmdline %d getppid %d race_target_b %d\n", cmdline, ppid, module);
	return 0;
}

static const char *const names[] = { "cmdline_proc_show", "getppid", "race_target_b" };

static int loop(int cpu, const char *result)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) != 0) {
		perror("sched_setaffinity");
		return 1;
	}
	struct sigaction action = { .sa_handler = on_term };
	sigaction(SIGTERM, &action, NULL);

	long parent = real_ppid();
	long rounds = 0, calls[3] = { 0 }, absent = 0, regressions = 0, bad = 0;
	long dropped[3] = { 0 };
	int last = 0, highest = 0;
	char first_problem[1024] = "";
	/* The answers before the one in hand, for the report of the first problem. */
	enum { HISTORY = 8 };
	struct { long round; int function, level; } history[HISTORY];
	int seen = 0;
	while (!stop) {
		int levels[3] = { cmdline_level(), getppid_level(parent), module_level() };
		for (int i = 0; i < 3; i++) {
			int level = levels[i];
			if (level == -2) {
				absent++;
				continue;
			}
			calls[i]++;
			if (level < 0 || level > MAX_LEVEL) {
				if (!bad++ && !first_problem[0])
					snprintf(first_problem, sizeof(first_problem),
						 "round %ld: %s answered with no level", rounds,
						 names[i]);
				continue;
			}
			if (level < last) {
				dropped[i]++;
				if (!regressions++ && !first_problem[0]) {
					int len = snprintf(first_problem, sizeof(first_problem),
						 "round %ld: %s answered level %d after level %d; before:",
						 rounds, names[i], level, last);
					for (int h = seen > HISTORY ? seen - HISTORY : 0; h < seen; h++)
						len += snprintf(first_problem + len,
								sizeof(first_problem) - len,
								" %ld:%s=%d", history[h % HISTORY].round,
								names[history[h % HISTORY].function],
								history[h % HISTORY].level);
				}
			}
			history[seen % HISTORY].round = rounds;
			history[seen % HISTORY].function = i;
			history[seen % HISTORY].level = level;
			seen++;
			last = level;
			if (level > highest)
				highest = level;
		}
		rounds++;
	}

	FILE *out = fopen(result, "w");
	if (!out)
		return 1;
	if (regressions == 0 && bad == 0 && sched_getcpu() == cpu)
		fprintf(out, "ok\n");
	else
		fprintf(out,
			"%ld regressions (%s %ld, %s %ld, %s %ld), %ld answers without a level, "
			"on CPU %d: %s\n",
			regressions, names[0], dropped[0], names[1], dropped[1], names[2],
			dropped[2], bad, sched_getcpu(), first_problem);
	fprintf(out,
		"cpu %d: %ld rounds, calls: %s %ld, %s %ld, %s %ld (module out %ld times), "
		"highest level %d, last level %d\n",
		cpu, rounds, names[0], calls[0], names[1], calls[1], names[2], calls[2], absent,
		highest, last);
	return fclose(out) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "probe") == 0)
		return probe();
	if (argc == 4 && strcmp(argv[1], "loop") == 0)
		return loop(atoi(argv[2]), argv[3]);
	fprintf(stderr, "usage: stress_calls loop CPU RESULT | stress_calls probe\n");
	return 2;
}
