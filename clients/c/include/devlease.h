/*
 * libdevlease: the C client of a devlease broker.
 *
 * A lease is one vfio-user connection to the broker's socket for a lease kind
 * (e.g. /run/devlease/sa1/queue.sock). Connecting sends the lease request;
 * the lease info (kind, id, IOVA window, queue, regions, isolation) is read
 * from the lease's info region; the leased regions are mapped through their
 * slice fds; DMA memory the caller brings is mapped into the lease's IOVA
 * window; vectors and notices are eventfds for the caller's own epoll loop.
 *
 * Error style (one for the whole API, as the kernel's VFIO selftest library's
 * __foo() functions): every function returning int returns 0 (or a
 * non-negative value where documented) on success and a NEGATIVE errno on
 * failure. devlease_errmsg() then names the problem, for the calling thread's
 * last failure (like dlerror()). DEVLEASE_MUST() is the asserting form.
 *
 * Threads: a lease is not thread-safe; use it from one thread at a time
 * (the SA-1 queue hot path touches only mapped memory and may run on its own).
 */
#ifndef DEVLEASE_H
#define DEVLEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEVLEASE_VERSION "0.1.0"

struct devlease;

struct devlease_connect_opts {
	/* The broker's socket for the lease kind. Required. */
	const char *socket;
	/* The lease request as a JSON object text, e.g. "{\"devmemGranules\":1}"; NULL: defaults. */
	const char *request_json;
	/* Deadline of each control call in ms; 0: 5000. */
	int timeout_ms;
};

struct devlease_region_info {
	unsigned index;
	uint64_t size;
	uint64_t unit;
};

/* How well one property of the lease is isolated: level "enforced" or "cooperative", and why. */
struct devlease_isolation {
	const char *name;
	const char *level;
	const char *reason;
};

struct devlease_fault {
	int queue; /* -1: the whole device */
	unsigned code;
	const char *name;
	uint64_t address;
};

/* The info region, as the broker wrote it. Valid until the next refresh or close. */
struct devlease_info {
	const char *kind;
	const char *lease;
	const char *state;   /* active, revoking, reclaiming, awaiting-release, released */
	int64_t deadline_ms; /* revocation deadline (ms since the epoch) while revoking, else -1 */
	int queue;           /* -1: none */
	bool has_iova_window;
	uint64_t iova_base, iova_size; /* the IOVAs this client may map and the device may reach */
	bool has_devmem;
	uint64_t devmem_offset, devmem_size;
	unsigned vectors;
	unsigned nregions;
	const struct devlease_region_info *regions;
	unsigned nisolation;
	const struct devlease_isolation *isolation;
	unsigned nfaults; /* the last fault records the broker keeps (16), oldest first */
	const struct devlease_fault *faults;
	uint64_t faults_total; /* faults this lease was sent in all (a broker that does not count them: nfaults) */
};

/* ---- errors ---- */

/* The calling thread's last failure, in words (empty when nothing failed yet). */
const char *devlease_errmsg(void);

#define DEVLEASE_MUST(expr)                                                                        \
	do {                                                                                       \
		int devlease_must_rc_ = (expr);                                                    \
		if (devlease_must_rc_ < 0) {                                               \
			fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,              \
				devlease_errmsg());                                                \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* ---- lease ---- */

/*
 * Connect and lease: VERSION with the request, the info region read, the leased regions mapped,
 * eventfds registered for the vectors, ERR and REQ. Refusals come back as the broker's errno
 * (EACCES policy, ENOSPC nothing free, EBUSY draining, EAGAIN recovering, ENODEV device away)
 * with its reason in devlease_errmsg().
 */
int devlease_connect(const struct devlease_connect_opts *opts, struct devlease **out);

/* Release everything (mappings, DMA maps, eventfds, the session: the broker reclaims). Idempotent;
 * afterwards every call but devlease_free() returns -EBADF. */
void devlease_close(struct devlease *l);
/* devlease_close(), then free the handle. NULL is fine. */
void devlease_free(struct devlease *l);
bool devlease_closed(const struct devlease *l);

const struct devlease_info *devlease_info(const struct devlease *l);
/* Read the info region again (state, deadline, faults). */
int devlease_refresh_info(struct devlease *l);

/* The mapped slice of lease region `index` (SA-1: 2, the queue page). */
int devlease_region(struct devlease *l, unsigned index, void **addr, size_t *len);
/* Reach a region through the broker (mediated regions, the info region). */
int devlease_region_read(struct devlease *l, unsigned index, uint64_t offset, void *buf, size_t len);
int devlease_region_write(struct devlease *l, unsigned index, uint64_t offset, const void *buf, size_t len);
/* The ioeventfd the device offers at `offset` of `region` (SA-1 rev 2: the doorbell kick at SQ_TAIL);
 * -ENOTSUP when it offers none; -EMFILE when this process's fd table is full as the fd comes (nothing is kept: ask
 * again once fds are free; the session goes on). The lease owns the fd. */
int devlease_io_eventfd(struct devlease *l, unsigned region, uint64_t offset);
/* Ask the broker to reset the lease's queue (after an error). */
int devlease_reset(struct devlease *l);

/* ---- DMA ---- */

#define DEVLEASE_DMA_READ 1u  /* the device may read */
#define DEVLEASE_DMA_WRITE 2u /* the device may write */

/* Map [offset, offset + size) of `fd` at `iova` inside the lease's window. The lease keeps its own
 * duplicate of fd. By default the broker maps only memory: a memfd, or a file on tmpfs or hugetlbfs
 * (-EPERM for any other file, naming its file system, and for a block device; docs/CONFIG.md,
 * policy.dma_files). */
int devlease_dma_map(struct devlease *l, int fd, uint64_t offset, uint64_t iova, uint64_t size, unsigned flags);
int devlease_dma_unmap(struct devlease *l, uint64_t iova, uint64_t size);

/* A buffer from the small allocator: a memfd, mapped here and at `iova` for the device. */
struct devlease_buf {
	void *addr;
	uint64_t iova;
	size_t size;
};
/* Allocate `size` bytes (rounded up to the lease's DMA page), mapped for device read and write. */
int devlease_dma_alloc(struct devlease *l, size_t size, struct devlease_buf *out);
/* Unmap and free; a buffer already freed (addr NULL) is fine. */
int devlease_dma_free(struct devlease *l, struct devlease_buf *buf);
/* The lease's DMA page size (sizes and IOVAs are multiples of it). */
uint64_t devlease_dma_page(const struct devlease *l);

/* ---- interrupts and notices (for the caller's epoll) ---- */

unsigned devlease_vector_count(const struct devlease *l);
/* The eventfd of vector v; readable when the device signals it. */
int devlease_vector_fd(const struct devlease *l, unsigned v);
/* Read (and clear) vector v's count without blocking: 0 when nothing fired. */
int devlease_vector_ack(struct devlease *l, unsigned v, uint64_t *count);
/* Wait for any vector up to timeout_ms; returns the vector, or -ETIMEDOUT. */
int devlease_wait_vector(struct devlease *l, int timeout_ms);

/* The eventfd signalled on a revocation notice (REQ). */
int devlease_revoke_fd(const struct devlease *l);
/* The eventfd signalled on a device fault or reset (ERR). */
int devlease_error_fd(const struct devlease *l);
/* The session socket: readable when the broker sends a command, or hangs up (EPOLLIN|EPOLLRDHUP). */
int devlease_socket_fd(const struct devlease *l);

enum devlease_notice_kind {
	DEVLEASE_NOTICE_NONE = 0,
	DEVLEASE_NOTICE_REVOKE,       /* close before deadline_ms */
	DEVLEASE_NOTICE_FAULT,        /* new faults: the records the info still holds from first_fault */
	DEVLEASE_NOTICE_RESET,        /* the device reset or went away: the lease is gone */
	DEVLEASE_NOTICE_DISCONNECTED, /* the broker closed the session (revoked, reclaimed) */
};

struct devlease_notice {
	enum devlease_notice_kind kind;
	int64_t deadline_ms; /* REVOKE */
	/* FAULT: info->faults[first_fault .. first_fault + nfaults) are new; when more came than the broker
	 * keeps, the older ones are gone (info->faults_total counts them all). */
	unsigned first_fault, nfaults;
};

/* Call when a notice fd or the socket is readable: serves what the broker sent and reports one notice.
 * Returns 1 with *n filled, 0 when nothing is pending. Never blocks: it serves at most 16 of the broker's
 * commands per call (the socket stays readable while more wait: call again when epoll says so), and waits only
 * for the rest of a message the broker has begun, within timeout_ms. */
int devlease_next_notice(struct devlease *l, struct devlease_notice *n);

const char *devlease_notice_name(enum devlease_notice_kind k);

/* Milliseconds since the epoch (the clock of deadline_ms). */
int64_t devlease_now_ms(void);

#ifdef __cplusplus
}
#endif
#endif
