/*
 * Test driver for test/clib/fd-table-full.test.ts: a lease whose process runs out of fds while a reply carrying
 * fds comes. One line per step ("ok …", "FAIL …"); exit 0 only when every step held.
 *   clib-fdfull SOCK   connect (a fake broker whose GET_REGION_IO_FDS reply carries 2 eventfds, after a DMA_READ
 *                      carrying one), then with RLIMIT_NOFILE lowered and every slot below it dup()ed:
 *                      devlease_io_eventfd fails EMFILE naming the limit; the session still answers; with one
 *                      slot free (one of the two fds installed) it fails EMFILE again and that slot is free
 *                      after; with the table emptied it returns the kick fd; fds back to baseline.
 * The table is filled for real: the kernel's scm_detach_fds then fails to install the reply's fds (MSG_CTRUNC).
 */
#define _GNU_SOURCE
#include <devlease.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "step.h"

/* Open fds (opendir takes one, counted the same way each time), and the highest open fd. */
static int fd_count(int *highest)
{
	int n = 0, fd = -1;
	DIR *d = opendir("/proc/self/fd");
	if (!d) return -1;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.') continue;
		n++;
		int v = atoi(e->d_name);
		if (v > fd) fd = v;
	}
	closedir(d);
	if (highest) *highest = fd;
	return n;
}

/* The slots taken (dups of one /dev/null), so that the table is full below `limit`. */
static struct {
	struct rlimit before;
	rlim_t limit;
	int src;
	int *taken, *probe; /* room for every slot below the limit (inherited fds may leave gaps) */
	unsigned n;
} table;

/* dup()s `table.src` into every free slot until EMFILE; how many were taken into `into` (cap `cap`). */
static unsigned take_all(int *into, unsigned cap)
{
	unsigned n = 0;
	for (;;) {
		int fd = fcntl(table.src, F_DUPFD_CLOEXEC, 0);
		if (fd < 0) {
			if (errno != EMFILE) step(false, "dup failed with %s, not EMFILE", strerrorname_np(errno));
			return n;
		}
		if (n == cap) {
			close(fd);
			step(false, "more than %u free slots below the limit %llu", cap, (unsigned long long)table.limit);
			return n;
		}
		into[n++] = fd;
	}
}

/* RLIMIT_NOFILE lowered to a little above the highest open fd, then every slot below it taken. */
static bool fill_table(void)
{
	int highest;
	if (fd_count(&highest) < 0 || getrlimit(RLIMIT_NOFILE, &table.before) < 0) return false;
	table.src = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (table.src < 0) return false;
	table.limit = (rlim_t)(highest > table.src ? highest : table.src) + 1 + 32;
	struct rlimit r = { .rlim_cur = table.limit, .rlim_max = table.before.rlim_max };
	table.taken = malloc(sizeof(int) * table.limit);
	table.probe = malloc(sizeof(int) * table.limit);
	if (!table.taken || !table.probe || setrlimit(RLIMIT_NOFILE, &r) < 0) return false;
	table.n = take_all(table.taken, (unsigned)table.limit);
	return table.n > 0;
}

/* Frees `n` of the slots taken. */
static void room(unsigned n)
{
	while (n-- && table.n) close(table.taken[--table.n]);
}

/* Free slots now (counted by taking them, then given back: /proc/self/fd needs one to read). */
static unsigned free_slots(void)
{
	unsigned n = take_all(table.probe, (unsigned)table.limit);
	for (unsigned i = 0; i < n; i++) close(table.probe[i]);
	return n;
}

static void restore_table(void)
{
	room(table.n);
	close(table.src);
	setrlimit(RLIMIT_NOFILE, &table.before);
	free(table.taken);
	free(table.probe);
}

static bool is_eventfd(int fd)
{
	char path[48], link[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0) return false;
	link[n] = 0;
	return strcmp(link, "anon_inode:[eventfd]") == 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2) {
		fprintf(stderr, "usage: clib-fdfull SOCKET\n");
		return 2;
	}
	int fds0 = fd_count(NULL);
	struct devlease *l = NULL;
	struct devlease_connect_opts o = { .socket = argv[1], .timeout_ms = 3000 };
	int rc = devlease_connect(&o, &l);
	step(rc == 0, "connect");
	if (rc < 0) return 1;

	if (!fill_table()) {
		step(false, "fill the fd table: %s", strerror(errno));
		return 1;
	}
	/* Nothing may open a descriptor from here to restore_table() but the calls under test. */
	rc = devlease_io_eventfd(l, 2, 0x0c);
	char want[64];
	snprintf(want, sizeof(want), "RLIMIT_NOFILE %llu", (unsigned long long)table.limit);
	step(rc == -EMFILE && strstr(devlease_errmsg(), "fd table") && strstr(devlease_errmsg(), want),
	     "io eventfd with the fd table full: rc %d (%s): %s", rc, rc < 0 ? strerrorname_np(-rc) : "-",
	     devlease_errmsg());
	/* The reply's bytes were read whole: the session reads the next reply as its own. */
	rc = devlease_refresh_info(l);
	step(rc == 0, "the session still answers (info read with the table full)");

	/* One slot free: the kernel installs the reply's first fd and fails the second. */
	room(1);
	rc = devlease_io_eventfd(l, 2, 0x0c);
	step(rc == -EMFILE, "io eventfd with one slot free: rc %d (%s)", rc, rc < 0 ? strerrorname_np(-rc) : "-");
	unsigned free_now = free_slots();
	step(free_now == 1, "the fd that came is closed: %u slot(s) free after (1 before)", free_now);

	restore_table();
	rc = devlease_io_eventfd(l, 2, 0x0c);
	step(rc >= 0 && is_eventfd(rc), "io eventfd with the fds freed: fd %d (%s)", rc,
	     rc >= 0 ? "eventfd" : strerrorname_np(-rc));
	devlease_free(l);
	int fds1 = fd_count(NULL);
	step(fds1 == fds0, "fds back to baseline (%d before, %d after)", fds0, fds1);
	printf("%s\n", failed ? "FAILED" : "PASSED");
	return failed;
}
