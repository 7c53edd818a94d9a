/* Vectors and notices as eventfds for the caller's epoll; devlease_next_notice() turns what fired
 * (ERR, REQ, the session's end) into one notice at a time, re-reading the info region as it goes. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t devlease_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

unsigned devlease_vector_count(const struct devlease *l)
{
	return l && !l->closed ? l->nvectors : 0;
}

int devlease_vector_fd(const struct devlease *l, unsigned v)
{
	int rc = dl_check_open(l, "vector fd");
	if (rc < 0) return rc;
	if (v >= l->nvectors) return dl_fail(ERANGE, "vector %u: the lease has %u", v, l->nvectors);
	return l->vectors[v];
}

/* Read an eventfd's count without blocking: 1 when it had fired, 0 when not. */
static int drain(int fd, uint64_t *count)
{
	uint64_t n = 0;
	ssize_t r = read(fd, &n, sizeof(n));
	if (count) *count = r == (ssize_t)sizeof(n) ? n : 0;
	if (r == (ssize_t)sizeof(n)) return 1;
	if (r < 0 && errno == EAGAIN) return 0;
	return dl_fail(r < 0 ? errno : EIO, "eventfd read: %s", r < 0 ? strerror(errno) : "short read");
}

int devlease_vector_ack(struct devlease *l, unsigned v, uint64_t *count)
{
	int rc = devlease_vector_fd(l, v);
	return rc < 0 ? rc : drain(rc, count);
}

int devlease_wait_vector(struct devlease *l, int timeout_ms)
{
	int rc = dl_check_open(l, "wait vector");
	if (rc < 0) return rc;
	if (!l->nvectors) return dl_fail(ENOENT, "wait vector: the lease has no vectors");
	struct pollfd p[64];
	unsigned n = l->nvectors < 64 ? l->nvectors : 64;
	for (unsigned i = 0; i < n; i++) p[i] = (struct pollfd){ .fd = l->vectors[i], .events = POLLIN };
	for (;;) {
		int k = poll(p, n, timeout_ms);
		if (k < 0 && errno == EINTR) continue;
		if (k < 0) return dl_fail(errno, "wait vector: %s", strerror(errno));
		if (k == 0) return dl_fail(ETIMEDOUT, "wait vector: no interrupt in %d ms", timeout_ms);
		for (unsigned i = 0; i < n; i++)
			if (p[i].revents & POLLIN) {
				rc = drain(l->vectors[i], NULL);
				if (rc < 0) return rc;
				if (rc) return (int)i;
			}
	}
}

int devlease_revoke_fd(const struct devlease *l)
{
	int rc = dl_check_open(l, "revoke fd");
	return rc < 0 ? rc : l->req_fd;
}

int devlease_error_fd(const struct devlease *l)
{
	int rc = dl_check_open(l, "error fd");
	return rc < 0 ? rc : l->err_fd;
}

int devlease_socket_fd(const struct devlease *l)
{
	int rc = dl_check_open(l, "socket fd");
	return rc < 0 ? rc : l->sock;
}

int devlease_next_notice(struct devlease *l, struct devlease_notice *n)
{
	int rc = dl_check_open(l, "next notice");
	if (rc < 0) return rc;
	if (!n) return dl_fail(EINVAL, "next notice: n is NULL");
	memset(n, 0, sizeof(*n));
	if (!l->broken) dl_serve_pending(l); /* a hang-up or a bad message marks the session broken */
	/* ERR first: on a device hang or reset the broker signals it and closes the session at once. */
	rc = drain(l->err_fd, NULL);
	if (rc < 0) return rc;
	if (rc) {
		if (!l->broken) devlease_refresh_info(l); /* best effort: the session may be ending */
		if (l->info.faults_total > l->faults_seen) {
			/* Counted by the total, not by the list: it stops growing at 16, and two may come between reads.
			 * (From a broker that does not count them the total is the list's length: its growth.) */
			uint64_t fresh = l->info.faults_total - l->faults_seen;
			unsigned held = fresh < l->info.nfaults ? (unsigned)fresh : l->info.nfaults;
			n->kind = DEVLEASE_NOTICE_FAULT;
			n->first_fault = l->info.nfaults - held;
			n->nfaults = held;
			l->faults_seen = l->info.faults_total;
		} else {
			n->kind = DEVLEASE_NOTICE_RESET;
		}
		return 1;
	}
	rc = drain(l->req_fd, NULL);
	if (rc < 0) return rc;
	if (rc) {
		if (!l->broken) devlease_refresh_info(l);
		n->kind = DEVLEASE_NOTICE_REVOKE;
		n->deadline_ms = l->info.deadline_ms >= 0 ? l->info.deadline_ms : devlease_now_ms();
		return 1;
	}
	if (l->broken && !l->disconnect_reported) {
		l->disconnect_reported = true; /* reported once */
		n->kind = DEVLEASE_NOTICE_DISCONNECTED;
		return 1;
	}
	return 0;
}
