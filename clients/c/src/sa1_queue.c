/*
 * The SA-1 queue helper. The hot path (submit, poll) touches only mapped
 * memory: descriptors in our DMA buffer, SQ_TAIL and CQ_HEAD in the queue
 * page the lease mapped. The doorbell store is sequentially consistent (a full
 * fence), so the Q_NOTIFY load after it cannot pass it (datasheet rev 2 §2.3):
 * a device that set KICK_NEEDED before our store has its request answered by
 * the kick; one that sets it later reads our SQ_TAIL itself.
 */
#define _GNU_SOURCE
#include "devlease_sa1.h"
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct devlease_sa1_queue {
	struct devlease *lease;
	unsigned entries;
	uint8_t *page;
	struct devlease_buf sq, cq;
	int kick_fd; /* owned by the lease; -1: none */
	unsigned spin_us;
	uint32_t tail, cq_head; /* free-running producer / consumer indexes */
	uint64_t next_tag;
	struct devlease_sa1_completion *done; /* by tag & (entries - 1): in flight tags never collide */
	unsigned stopped_by; /* a fatal status seen in a completion: the queue is in ERROR until our reset */
};

static const char *const names[] = { "OK", "BAD_OPCODE", "BAD_LENGTH", "WINDOW_VIOLATION", "IOMMU_FAULT",
				     "DEVMEM_VIOLATION", "ABORTED", "BAD_QUEUE_CONFIG" };

const char *devlease_sa1_status_name(unsigned status)
{
	return status < sizeof(names) / sizeof(names[0]) ? names[status] : NULL;
}

static uint32_t reg32(const struct devlease_sa1_queue *q, unsigned off)
{
	return __atomic_load_n((const uint32_t *)(q->page + off), __ATOMIC_ACQUIRE);
}

static void set32(struct devlease_sa1_queue *q, unsigned off, uint32_t v)
{
	__atomic_store_n((uint32_t *)(q->page + off), v, __ATOMIC_RELEASE);
}

static void set64(struct devlease_sa1_queue *q, unsigned off, uint64_t v)
{
	__atomic_store_n((uint64_t *)(q->page + off), v, __ATOMIC_RELEASE);
}

static bool fatal(unsigned code)
{
	return code == SA1_ST_WINDOW_VIOLATION || code == SA1_ST_IOMMU_FAULT || code == SA1_ST_DEVMEM_VIOLATION ||
	       code == SA1_ST_BAD_QUEUE_CONFIG;
}

unsigned devlease_sa1_error(const struct devlease_sa1_queue *q)
{
	if (!q || devlease_closed(q->lease)) return 0;
	unsigned code = reg32(q, SA1_QP_Q_ERROR) & 0xff;
	if (fatal(code)) return code; /* BAD_OPCODE and BAD_LENGTH leave the queue running (§4) */
	/* The device writes the faulting descriptor's completion before it shows ERROR (docs/SA-1.md), so a
	 * fatal completion already seen means ERROR even while Q_ERROR still reads 0. */
	return q->stopped_by;
}

static int check(const struct devlease_sa1_queue *q, const char *what)
{
	if (!q) return dl_fail(EINVAL, "%s: no queue (NULL)", what);
	return dl_check_open(q->lease, what); /* the queue page is unmapped once the lease closes */
}

static void program(struct devlease_sa1_queue *q)
{
	memset(q->sq.addr, 0, q->sq.size);
	memset(q->cq.addr, 0, q->cq.size);
	memset(q->done, 0, sizeof(*q->done) * q->entries);
	set64(q, SA1_QP_SQ_BASE, q->sq.iova);
	set32(q, SA1_QP_SQ_SIZE, q->entries);
	set64(q, SA1_QP_CQ_BASE, q->cq.iova);
	set32(q, SA1_QP_CQ_SIZE, q->entries);
	set32(q, SA1_QP_CQ_HEAD, 0);
	set32(q, SA1_QP_IRQ_MODE, SA1_IRQ_MODE_FLAGGED);
	q->tail = q->cq_head = 0;
	q->stopped_by = 0;
}

int devlease_sa1_queue_create(struct devlease *l, const struct devlease_sa1_queue_opts *opts,
			      struct devlease_sa1_queue **out)
{
	int rc = dl_check_open(l, "sa1 queue");
	if (rc < 0) return rc;
	if (!out) return dl_fail(EINVAL, "sa1 queue: out is NULL");
	*out = NULL;
	unsigned entries = opts && opts->entries ? opts->entries : 256;
	if (entries < SA1_RING_MIN_ENTRIES || entries > SA1_RING_MAX_ENTRIES || (entries & (entries - 1)))
		return dl_fail(EINVAL, "sa1 queue: ring entries must be a power of two from 2 to 65536, got %u", entries);
	void *page;
	size_t plen;
	if ((rc = devlease_region(l, DEVLEASE_SA1_QUEUE_PAGE_REGION, &page, &plen)) < 0) return rc;
	if (plen < SA1_QP_REGISTERS_END) return dl_fail(EPROTO, "sa1 queue: the queue page is %zu bytes", plen);
	/* Start from a clean queue: the device latches ring registers at the first doorbell after enable. */
	if ((rc = devlease_reset(l)) < 0) return rc;
	struct devlease_sa1_queue *q = calloc(1, sizeof(*q));
	if (!q || !(q->done = calloc(entries, sizeof(*q->done)))) {
		free(q);
		return dl_fail(ENOMEM, "no memory");
	}
	q->lease = l;
	q->entries = entries;
	q->page = page;
	q->spin_us = opts && opts->spin_us ? opts->spin_us : 50;
	q->kick_fd = -1;
	if (!(opts && opts->no_kick)) {
		rc = devlease_io_eventfd(l, DEVLEASE_SA1_QUEUE_PAGE_REGION, SA1_QP_SQ_TAIL);
		if (rc >= 0) {
			/* The kick is a write(2) on the submit path, to an fd the server chose (region.c). */
			const char *why = dl_kick_fd_problem(rc);
			if (why) {
				rc = dl_fail(EPROTO, "the queue's doorbell kick fd is refused: %s; it must be a non-blocking eventfd",
					     why);
				goto fail;
			}
			q->kick_fd = rc; /* the lease's: closed with it */
		} else if (rc != -ENOTSUP)
			goto fail; /* ENOTSUP: the device's idle poll serves us (rev 1) */
	}
	if ((rc = devlease_dma_alloc(l, (size_t)entries * SA1_SQ_ENTRY_SIZE, &q->sq)) < 0) goto fail;
	if ((rc = devlease_dma_alloc(l, (size_t)entries * SA1_CQ_ENTRY_SIZE, &q->cq)) < 0) goto fail;
	program(q);
	*out = q;
	return 0;
fail:
	devlease_sa1_queue_free(q);
	return rc;
}

void devlease_sa1_queue_free(struct devlease_sa1_queue *q)
{
	if (!q) return;
	devlease_dma_free(q->lease, &q->sq);
	devlease_dma_free(q->lease, &q->cq);
	free(q->done);
	free(q);
}

unsigned devlease_sa1_space(const struct devlease_sa1_queue *q)
{
	if (check(q, "sa1 space") < 0) return 0;
	return q->entries - (q->tail - reg32(q, SA1_QP_SQ_HEAD));
}

int devlease_sa1_submit(struct devlease_sa1_queue *q, const struct devlease_sa1_desc *d, unsigned n, uint64_t *first_tag)
{
	int rc = check(q, "sa1 submit");
	if (rc < 0) return rc;
	if (!d || n == 0 || n > q->entries) return dl_fail(EINVAL, "sa1 submit: a batch of %u (the ring has %u entries)", n, q->entries);
	unsigned err = devlease_sa1_error(q);
	if (err) return dl_fail(EIO, "sa1 submit: the queue is in ERROR (%s); reset it first", devlease_sa1_status_name(err));
	/* Consumed slots: the later of SQ_HEAD and the completions collected (SQ_HEAD follows a completion's
	 * entry by a moment; every completion is of a fetched descriptor). */
	uint32_t head = reg32(q, SA1_QP_SQ_HEAD);
	if ((int32_t)(q->cq_head - head) > 0) head = q->cq_head;
	if ((q->tail - head) + n > q->entries)
		return dl_fail(EAGAIN, "sa1 submit: submission ring full: wait for completions (back-pressure)");
	uint64_t tag = q->next_tag + 1;
	for (unsigned i = 0; i < n; i++) {
		uint8_t *e = (uint8_t *)q->sq.addr + ((q->tail + i) & (q->entries - 1)) * SA1_SQ_ENTRY_SIZE;
		memset(e, 0, SA1_SQ_ENTRY_SIZE);
		e[0] = d[i].opcode;
		bool intr = i == n - 1 && !(d[i].flags & DEVLEASE_SA1_NO_INTR);
		e[1] = (uint8_t)((d[i].flags & ~DEVLEASE_SA1_NO_INTR) | (intr ? SA1_FLAG_INTR : 0));
		dl_put32(e + 4, d[i].length);
		dl_put64(e + 8, d[i].src);
		dl_put64(e + 16, d[i].dst);
		dl_put64(e + 24, d[i].imm);
		dl_put64(e + 32, tag + i);
		q->done[(tag + i) & (q->entries - 1)].tag = 0; /* not completed yet */
	}
	q->next_tag += n;
	q->tail += n;
	__atomic_store_n((uint32_t *)(q->page + SA1_QP_SQ_TAIL), q->tail, __ATOMIC_SEQ_CST); /* the doorbell */
	if (q->kick_fd >= 0 && (reg32(q, SA1_QP_Q_NOTIFY) & SA1_Q_NOTIFY_KICK_NEEDED)) {
		uint64_t one = 1;
		/* EAGAIN: the counter is saturated, so a wake-up is pending anyway */
		if (write(q->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			return dl_fail(errno, "sa1 submit: doorbell kick: %s", strerror(errno));
		/* The woken device thread often lands on this CPU (the scheduler wakes it beside its waker), and a
		 * caller that then spins in devlease_sa1_wait would hold it off for the rest of a time slice (~1.5 ms
		 * on 2 CPUs). Yield once: with nothing else runnable here it returns at once. As Sa1Queue. */
		sched_yield();
	}
	if (first_tag) *first_tag = tag;
	return (int)n;
}

int devlease_sa1_poll(struct devlease_sa1_queue *q)
{
	int rc = check(q, "sa1 poll");
	if (rc < 0) return rc;
	int n = 0;
	for (;;) {
		uint32_t slot = q->cq_head & (q->entries - 1);
		uint16_t phase = (q->cq_head & q->entries) ? 0 : 1; /* the pass parity is the next bit up */
		const uint8_t *e = (const uint8_t *)q->cq.addr + slot * SA1_CQ_ENTRY_SIZE;
		uint16_t w = __atomic_load_n((const uint16_t *)(e + 14), __ATOMIC_ACQUIRE);
		if ((w & 1) != phase) break;
		struct devlease_sa1_completion c;
		c.tag = dl_get64(e);
		c.result = dl_get32(e + 8);
		memcpy(&c.status, e + 12, 2);
		q->cq_head++;
		n++;
		if (c.tag) q->done[c.tag & (q->entries - 1)] = c;
		if (fatal(c.status) && !q->stopped_by) q->stopped_by = c.status;
	}
	if (n) set32(q, SA1_QP_CQ_HEAD, q->cq_head);
	return n;
}

int devlease_sa1_wait(struct devlease_sa1_queue *q, uint64_t tag, int timeout_ms, struct devlease_sa1_completion *c)
{
	int rc = check(q, "sa1 wait");
	if (rc < 0) return rc;
	if (tag == 0 || tag > q->next_tag || q->next_tag - tag >= q->entries)
		return dl_fail(EINVAL, "sa1 wait: tag %llu is not in flight", (unsigned long long)tag);
	struct devlease_sa1_completion *slot = &q->done[tag & (q->entries - 1)];
	int64_t start = dl_mono_us(), end = start + (int64_t)timeout_ms * 1000;
	int vfd = devlease_vector_count(q->lease) ? devlease_vector_fd(q->lease, 0) : -1;
	while (slot->tag != tag) {
		if ((rc = devlease_sa1_poll(q)) < 0) return rc;
		if (slot->tag == tag) break;
		int64_t t = dl_mono_us();
		if (t > end) return dl_fail(ETIMEDOUT, "sa1 wait: descriptor %llu did not complete in %d ms", (unsigned long long)tag, timeout_ms);
		unsigned err = devlease_sa1_error(q);
		if (err) {
			devlease_sa1_poll(q); /* the faulting descriptor's completion may land just after Q_ERROR */
			if (slot->tag == tag) break;
			return dl_fail(EIO, "sa1 wait: the queue entered ERROR (%s)", devlease_sa1_status_name(err));
		}
		if (t - start < q->spin_us) continue; /* the device answers in microseconds */
		/* Sleep until an interrupt, but look again every millisecond (a descriptor without INTR). */
		struct pollfd p = { .fd = vfd, .events = POLLIN };
		if (vfd >= 0 && poll(&p, 1, 1) == 1) {
			uint64_t drained;
			if (read(vfd, &drained, sizeof(drained)) < 0) { /* EAGAIN: another waiter took it */ }
		} else if (vfd < 0) {
			struct timespec ms = { 0, 1000000 };
			nanosleep(&ms, NULL);
		}
	}
	if (c) *c = *slot;
	if (slot->status == SA1_ST_OK) return 0;
	const char *name = devlease_sa1_status_name(slot->status);
	if (!name)
		return dl_fail(EPROTO, "descriptor %llu completed with status 0x%x, which the SA-1 datasheet does not define (a device bug)",
			       (unsigned long long)tag, slot->status);
	return dl_fail(EIO, "descriptor %llu completed with %s", (unsigned long long)tag, name);
}

int devlease_sa1_run(struct devlease_sa1_queue *q, const struct devlease_sa1_desc *d, unsigned n, int timeout_ms,
		     struct devlease_sa1_completion *c)
{
	uint64_t first;
	int rc = devlease_sa1_submit(q, d, n, &first);
	if (rc < 0) return rc;
	int result = 0;
	char why[512] = "";
	for (unsigned i = 0; i < n; i++) {
		struct devlease_sa1_completion one = { 0 };
		rc = devlease_sa1_wait(q, first + i, timeout_ms, &one);
		if (c) c[i] = one;
		if (rc == -ETIMEDOUT || (rc < 0 && rc != -EIO && rc != -EPROTO)) return rc;
		if (rc < 0 && !result) {
			result = rc;
			snprintf(why, sizeof(why), "%s", devlease_errmsg());
		}
	}
	return result < 0 ? dl_fail(-result, "%s", why) : 0;
}

int devlease_sa1_queue_reset(struct devlease_sa1_queue *q)
{
	int rc = check(q, "sa1 reset");
	if (rc < 0) return rc;
	if ((rc = devlease_reset(q->lease)) < 0) return rc;
	program(q);
	return 0;
}
