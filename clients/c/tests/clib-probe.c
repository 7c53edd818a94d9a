/*
 * Test driver for test/clib: runs one scenario against a real broker and prints what happened, one
 * line per step ("ok …", "FAIL …"); exit 0 only when every step held.
 *   clib-probe workload SOCK   lease, info, COPY/FILL/CRC32C/WRITE_IMM verified, batches, a bad
 *                              descriptor's typed status, use after close, fds back to baseline
 *   clib-probe revoke SOCK     work until the revocation notice, then release before its deadline
 *   clib-probe hold SOCK       lease, map, then wait to be killed
 *   clib-probe connect SOCK    connect once and report the error (fake-broker tests); fds checked
 *   clib-probe queue SOCK      connect and make an SA-1 queue; report the error (fake-broker tests); fds checked
 *   clib-probe notice-once SOCK   connect, wait for the socket to be readable, one devlease_next_notice; fds checked
 *   clib-probe notices SOCK    lease, then print every notice until the session ends
 *   clib-probe request SOCK JSON   lease with a request; the info's devmem and the regions mapped
 */
#define _GNU_SOURCE
#include <devlease_sa1.h>

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "step.h"

static int fd_count(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d) return -1;
	while (readdir(d)) n++;
	closedir(d);
	return n;
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & -(c & 1));
	}
	return ~c;
}

static struct devlease *lease_or_die(const char *sock)
{
	struct devlease *l;
	struct devlease_connect_opts o = { .socket = sock, .timeout_ms = 20000 };
	int rc = devlease_connect(&o, &l);
	step(rc == 0, "connect");
	if (rc < 0) exit(1);
	return l;
}

static int workload(const char *sock)
{
	int fds0 = fd_count();
	struct devlease *l = lease_or_die(sock);
	const struct devlease_info *in = devlease_info(l);
	printf("info lease=%s kind=%s state=%s queue=%d window=0x%llx+0x%llx vectors=%u regions=%u\n", in->lease,
	       in->kind, in->state, in->queue, (unsigned long long)in->iova_base, (unsigned long long)in->iova_size,
	       in->vectors, in->nregions);
	for (unsigned i = 0; i < in->nisolation; i++)
		printf("isolation %s=%s (%s)\n", in->isolation[i].name, in->isolation[i].level, in->isolation[i].reason);
	step(in->has_iova_window && in->nregions >= 1 && in->nisolation >= 1, "info has a window, regions, isolation");
	void *page;
	size_t plen;
	step(devlease_region(l, 2, &page, &plen) == 0 && plen >= 4096, "queue page mapped");

	struct devlease_sa1_queue *q;
	if (devlease_sa1_queue_create(l, NULL, &q) < 0) {
		step(false, "queue create");
		return 1;
	}
	enum { N = 65536 };
	struct devlease_buf src, dst;
	step(devlease_dma_alloc(l, N, &src) == 0 && devlease_dma_alloc(l, N, &dst) == 0, "dma alloc");
	uint8_t *s = src.addr, *d = dst.addr;
	for (int i = 0; i < N; i++) s[i] = (uint8_t)(i * 7 + 3);

	struct devlease_sa1_desc copy = { .opcode = SA1_OP_COPY, .src = src.iova, .dst = dst.iova, .length = N };
	step(devlease_sa1_run(q, &copy, 1, 10000, NULL) == 0 && memcmp(s, d, N) == 0, "COPY 64 KiB verified");

	struct devlease_sa1_desc fill = { .opcode = SA1_OP_FILL, .dst = dst.iova, .length = 1000, .imm = 0x0807060504030201ull };
	step(devlease_sa1_run(q, &fill, 1, 10000, NULL) == 0, "FILL ran");
	bool fill_ok = true;
	for (int i = 0; i < 1000; i++) fill_ok &= d[i] == (uint8_t)(i % 8 + 1);
	fill_ok &= d[1000] == s[1000]; /* the tail truncated, nothing past length */
	step(fill_ok, "FILL pattern verified");

	struct devlease_sa1_completion c;
	int rc;
	memcpy(s, "123456789", 9);
	struct devlease_sa1_desc crc = { .opcode = SA1_OP_CRC32C, .src = src.iova, .length = 9 };
	rc = devlease_sa1_run(q, &crc, 1, 10000, &c);
	step(rc == 0 && c.result == 0xe3069283u, "CRC32C of \"123456789\" = 0x%08x", c.result);
	struct devlease_sa1_desc crc2 = { .opcode = SA1_OP_CRC32C, .src = src.iova, .length = N };
	step(devlease_sa1_run(q, &crc2, 1, 10000, &c) == 0 && c.result == crc32c(s, N), "CRC32C of 64 KiB matches software");

	struct devlease_sa1_desc imm = { .opcode = SA1_OP_WRITE_IMM, .dst = dst.iova + 8, .imm = 0x1122334455667788ull };
	uint64_t got = 0;
	rc = devlease_sa1_run(q, &imm, 1, 10000, NULL);
	memcpy(&got, d + 8, 8);
	step(rc == 0 && got == 0x1122334455667788ull, "WRITE_IMM verified");

	/* Batches: 1000 NOPs and COPYs, 32 per doorbell, more than the ring holds in total. */
	struct devlease_sa1_desc batch[32];
	bool batch_ok = true;
	for (int round = 0; round < 32 && batch_ok; round++) {
		for (int i = 0; i < 32; i++)
			batch[i] = i % 2 ? (struct devlease_sa1_desc){ .opcode = SA1_OP_NOP }
					 : (struct devlease_sa1_desc){ .opcode = SA1_OP_COPY, .src = src.iova + 4096 * (i / 2),
								       .dst = dst.iova + 4096 * (i / 2), .length = 4096 };
		batch_ok = devlease_sa1_run(q, batch, 32, 10000, NULL) == 0;
	}
	step(batch_ok && memcmp(s + 4096, d + 4096, N - 4096) == 0, "1024 descriptors in batches of 32");

	/* A descriptor outside the window: the typed status, the queue stops, a reset brings it back. */
	struct devlease_sa1_desc bad = { .opcode = SA1_OP_COPY, .src = in->iova_base + in->iova_size, .dst = dst.iova, .length = 64 };
	memset(&c, 0, sizeof(c));
	rc = devlease_sa1_run(q, &bad, 1, 10000, &c);
	step(rc == -EIO && c.status == DEVLEASE_SA1_WINDOW_VIOLATION && strstr(devlease_errmsg(), "WINDOW_VIOLATION"),
	     "outside the window: -EIO with WINDOW_VIOLATION (rc %d, status %u)", rc, c.status);
	step(devlease_sa1_error(q) == SA1_ST_WINDOW_VIOLATION, "queue in ERROR");
	struct devlease_sa1_desc nop = { .opcode = SA1_OP_NOP };
	rc = devlease_sa1_submit(q, &nop, 1, NULL);
	step(rc == -EIO, "submit while in ERROR refused (rc %d: %s)", rc, devlease_errmsg());
	step(devlease_sa1_queue_reset(q) == 0 && devlease_sa1_run(q, &nop, 1, 10000, NULL) == 0, "reset, then NOP completes");

	/* The caller's own memory: a memfd it made, mapped at an IOVA it chose, the device writes it. */
	int mfd = memfd_create("caller-buffer", MFD_CLOEXEC);
	void *mine = MAP_FAILED;
	if (mfd >= 0 && ftruncate(mfd, 8192) == 0) mine = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	uint64_t at = in->iova_base + in->iova_size - 8192;
	rc = devlease_dma_map(l, mfd, 0, at, 8192, DEVLEASE_DMA_READ | DEVLEASE_DMA_WRITE);
	step(rc == 0 && mine != MAP_FAILED, "own memfd mapped at 0x%llx", (unsigned long long)at);
	struct devlease_sa1_desc tomine = { .opcode = SA1_OP_COPY, .src = src.iova, .dst = at + 4096, .length = 4096 };
	rc = devlease_sa1_run(q, &tomine, 1, 10000, NULL);
	step(rc == 0 && mine != MAP_FAILED && memcmp((uint8_t *)mine + 4096, s, 4096) == 0, "COPY into own memfd verified");
	step(devlease_dma_unmap(l, at, 8192) == 0, "own memfd unmapped");
	if (mine != MAP_FAILED) munmap(mine, 8192);
	/* Bad maps are refused with a reason: unaligned, outside the window, not an fd. */
	rc = devlease_dma_map(l, mfd, 0, in->iova_base + 1, 4096, DEVLEASE_DMA_READ);
	step(rc == -EINVAL, "unaligned dma map refused: %s", devlease_errmsg());
	rc = devlease_dma_map(l, mfd, 0, in->iova_base + in->iova_size, 4096, DEVLEASE_DMA_READ);
	step(rc == -EPERM, "dma map outside the window refused: %s", devlease_errmsg());
	rc = devlease_dma_map(l, -1, 0, in->iova_base, 4096, DEVLEASE_DMA_READ);
	step(rc == -EBADF, "dma map of fd -1 refused: %s", devlease_errmsg());
	close(mfd);

	step(devlease_dma_free(l, &src) == 0 && src.addr == NULL, "dma free");

	devlease_close(l);
	devlease_close(l); /* idempotent */
	step(devlease_closed(l), "closed");
	rc = devlease_region(l, 2, &page, &plen);
	step(rc == -EBADF && strstr(devlease_errmsg(), "closed"), "region after close refused: %s", devlease_errmsg());
	struct devlease_buf b2;
	step(devlease_dma_alloc(l, 4096, &b2) == -EBADF, "dma alloc after close refused");
	step(devlease_sa1_submit(q, &nop, 1, NULL) == -EBADF, "submit after close refused");
	step(devlease_refresh_info(l) == -EBADF && devlease_info(l) == NULL, "info after close refused");
	devlease_sa1_queue_free(q);
	devlease_free(l);
	int fds1 = fd_count();
	step(fds1 == fds0, "fds back to baseline (%d before, %d after)", fds0, fds1);
	printf("%s\n", failed ? "FAILED" : "PASSED");
	return failed;
}

static int revoke_scenario(const char *sock)
{
	struct devlease *l = lease_or_die(sock);
	struct devlease_sa1_queue *q;
	if (devlease_sa1_queue_create(l, NULL, &q) < 0) return step(false, "queue create"), 1;
	printf("leased %s\n", devlease_info(l)->lease);
	fflush(stdout);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int watch[] = { devlease_revoke_fd(l), devlease_error_fd(l), devlease_socket_fd(l) };
	for (int i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = watch[i] };
		epoll_ctl(ep, EPOLL_CTL_ADD, watch[i], &ev);
	}
	struct devlease_sa1_desc nop = { .opcode = SA1_OP_NOP };
	long done = 0;
	int64_t end = devlease_now_ms() + 60000;
	while (devlease_now_ms() < end) {
		if (devlease_sa1_run(q, &nop, 1, 10000, NULL) == 0) done++;
		struct epoll_event ev;
		if (epoll_wait(ep, &ev, 1, done % 64 ? 0 : 1) <= 0) continue;
		struct devlease_notice n;
		while (devlease_next_notice(l, &n) == 1) {
			printf("notice %s\n", devlease_notice_name(n.kind));
			if (n.kind != DEVLEASE_NOTICE_REVOKE) continue;
			int64_t left = n.deadline_ms - devlease_now_ms();
			printf("revoke notice: %lld ms to let go, state %s, after %ld operations\n", (long long)left,
			       devlease_info(l)->state, done);
			devlease_sa1_queue_free(q);
			devlease_free(l); /* voluntary release: the broker reclaims now, not at the deadline */
			left = n.deadline_ms - devlease_now_ms();
			step(left > 0, "released %lld ms before the deadline", (long long)left);
			close(ep);
			return failed;
		}
	}
	step(false, "no revocation notice in 60 s");
	return 1;
}

static int hold(const char *sock)
{
	struct devlease *l = lease_or_die(sock);
	struct devlease_sa1_queue *q;
	struct devlease_buf b;
	struct devlease_sa1_desc nop = { .opcode = SA1_OP_NOP };
	step(devlease_sa1_queue_create(l, NULL, &q) == 0 && devlease_dma_alloc(l, 8192, &b) == 0 &&
		     devlease_sa1_run(q, &nop, 1, 10000, NULL) == 0,
	     "queue, buffer, NOP");
	printf("leased %s\n", devlease_info(l)->lease);
	fflush(stdout);
	for (;;) pause();
	return 0;
}

/* Lease with a request (JSON), report what the info and the mappings say. */
static int request(const char *sock, const char *json)
{
	struct devlease *l = NULL;
	struct devlease_connect_opts o = { .socket = sock, .request_json = json, .timeout_ms = 20000 };
	int rc = devlease_connect(&o, &l);
	if (rc < 0) {
		printf("error %s: %s\n", strerrorname_np(-rc), devlease_errmsg());
		return 0;
	}
	const struct devlease_info *in = devlease_info(l);
	printf("leased %s devmem %s 0x%llx+0x%llx\n", in->lease, in->has_devmem ? "yes" : "no",
	       (unsigned long long)in->devmem_offset, (unsigned long long)in->devmem_size);
	for (unsigned i = 0; i < in->nregions; i++) {
		void *a;
		size_t len;
		bool mapped = devlease_region(l, in->regions[i].index, &a, &len) == 0;
		printf("region %u size 0x%llx %s\n", in->regions[i].index, (unsigned long long)in->regions[i].size,
		       mapped ? "mapped" : "not mapped");
		if (mapped && in->regions[i].index >= 10) { /* device memory: what we store, the device holds */
			memset(a, 0xa5, 64);
			uint8_t back[64];
			rc = devlease_region_read(l, in->regions[i].index, 0, back, sizeof(back));
			step(rc == 0 && back[0] == 0xa5 && back[63] == 0xa5, "region %u: a store through the mapping reads back through the broker", in->regions[i].index);
		}
	}
	devlease_free(l);
	return failed;
}

/* Report every notice (ERR: fault or reset, REQ, the session's end) until the session ends. */
static int notices(const char *sock)
{
	struct devlease *l = lease_or_die(sock);
	printf("leased %s queue %d\n", devlease_info(l)->lease, devlease_info(l)->queue);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int watch[] = { devlease_revoke_fd(l), devlease_error_fd(l), devlease_socket_fd(l) };
	for (int i = 0; i < 3; i++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = watch[i] };
		epoll_ctl(ep, EPOLL_CTL_ADD, watch[i], &ev);
	}
	int64_t end = devlease_now_ms() + 120000;
	while (devlease_now_ms() < end) {
		struct epoll_event ev;
		if (epoll_wait(ep, &ev, 1, 1000) <= 0) continue;
		struct devlease_notice n;
		int rc;
		while ((rc = devlease_next_notice(l, &n)) == 1) {
			printf("notice %s\n", devlease_notice_name(n.kind));
			const struct devlease_info *in = devlease_info(l);
			for (unsigned i = 0; n.kind == DEVLEASE_NOTICE_FAULT && i < n.nfaults; i++) {
				const struct devlease_fault *f = &in->faults[n.first_fault + i];
				printf("fault %s code %u queue %d address 0x%llx\n", f->name, f->code, f->queue, (unsigned long long)f->address);
			}
			if (n.kind == DEVLEASE_NOTICE_DISCONNECTED) {
				close(ep);
				devlease_free(l);
				return failed;
			}
		}
		if (rc < 0) step(false, "next notice");
	}
	step(false, "the session did not end in 120 s");
	return 1;
}

/* One lease from a fake broker (3 s deadline): `then` runs on it, any error is printed, and every fd is checked
 * back to its baseline once the lease is freed. */
static int once(const char *sock, int (*then)(struct devlease *l))
{
	int fds0 = fd_count();
	struct devlease *l = NULL;
	struct devlease_connect_opts o = { .socket = sock, .timeout_ms = 3000 };
	int rc = devlease_connect(&o, &l);
	if (rc == 0) rc = then(l);
	if (rc < 0) printf("error %s: %s\n", strerrorname_np(-rc), devlease_errmsg());
	devlease_free(l);
	int fds1 = fd_count();
	step(fds1 == fds0, "fds back to baseline (%d before, %d after)", fds0, fds1);
	return failed;
}

static int connected(struct devlease *l)
{
	printf("connected %s dma page %llu\n", devlease_info(l)->lease, (unsigned long long)devlease_dma_page(l));
	return 0;
}

static int make_queue(struct devlease *l)
{
	struct devlease_sa1_queue *q = NULL;
	int rc = devlease_sa1_queue_create(l, NULL, &q);
	if (rc == 0) printf("queue created\n");
	devlease_sa1_queue_free(q);
	return rc;
}

static int one_notice(struct devlease *l)
{
	struct pollfd p = { .fd = devlease_socket_fd(l), .events = POLLIN };
	step(poll(&p, 1, 3000) == 1, "the session socket turned readable");
	struct devlease_notice n;
	int rc = devlease_next_notice(l, &n);
	if (rc >= 0) printf("next notice returned %d (%s)\n", rc, rc ? devlease_notice_name(n.kind) : "none");
	return rc;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "request")) return request(argv[2], argv[3]);
	if (argc != 3) {
		fprintf(stderr, "usage: clib-probe workload|revoke|hold|connect|queue|notice-once|notices SOCKET\n");
		return 2;
	}
	if (!strcmp(argv[1], "workload")) return workload(argv[2]);
	if (!strcmp(argv[1], "revoke")) return revoke_scenario(argv[2]);
	if (!strcmp(argv[1], "hold")) return hold(argv[2]);
	if (!strcmp(argv[1], "connect")) return once(argv[2], connected);
	if (!strcmp(argv[1], "queue")) return once(argv[2], make_queue);
	if (!strcmp(argv[1], "notice-once")) return once(argv[2], one_notice);
	if (!strcmp(argv[1], "notices")) return notices(argv[2]);
	fprintf(stderr, "clib-probe: unknown scenario %s\n", argv[1]);
	return 2;
}
