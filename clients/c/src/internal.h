/* libdevlease internals: the lease handle and the vfio-user wire. */
#ifndef DEVLEASE_INTERNAL_H
#define DEVLEASE_INTERNAL_H

#include "devlease.h"

#include <json-c/json.h>
#include <time.h>

/* vfio-user commands (QEMU docs/interop/vfio-user.rst) and header flags. */
enum {
	VFIO_USER_VERSION = 1,
	VFIO_USER_DMA_MAP = 2,
	VFIO_USER_DMA_UNMAP = 3,
	VFIO_USER_DEVICE_GET_INFO = 4,
	VFIO_USER_DEVICE_GET_REGION_INFO = 5,
	VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6,
	VFIO_USER_DEVICE_SET_IRQS = 8,
	VFIO_USER_REGION_READ = 9,
	VFIO_USER_REGION_WRITE = 10,
	VFIO_USER_DMA_READ = 11,
	VFIO_USER_DMA_WRITE = 12,
	VFIO_USER_DEVICE_RESET = 13,
};
#define VFIO_USER_F_TYPE_MASK 0xfu
#define VFIO_USER_F_TYPE_REPLY 0x1u
#define VFIO_USER_F_NO_REPLY 0x10u
#define VFIO_USER_F_ERROR 0x20u
#define VFIO_USER_HEADER_SIZE 16u

#define VFIO_IRQ_SET_DATA_EVENTFD (1u << 2)
#define VFIO_IRQ_SET_ACTION_TRIGGER (1u << 5)
#define VFIO_PCI_MSIX_IRQ_INDEX 2u
#define VFIO_PCI_ERR_IRQ_INDEX 3u
#define VFIO_PCI_REQ_IRQ_INDEX 4u

/* What we accept: fds per message, data per transfer (the broker advertises 65536). */
#define DL_MAX_FDS 16
#define DL_MAX_XFER 65536u
/* Commands from the broker one devlease_next_notice serves at most: one streaming them must not hold it. */
#define DL_MAX_SERVED 16
/* The largest message we take: a transfer plus headroom for io-fd tables. */
#define DL_MAX_MSG (VFIO_USER_HEADER_SIZE + 2 * DL_MAX_XFER)
#define DL_MAX_DMA_MAPS 4096

struct dl_msg {
	uint16_t id, cmd;
	uint32_t flags, error_no;
	uint8_t *payload; /* malloc'd, payload_len bytes */
	size_t payload_len;
	int fds[DL_MAX_FDS];
	unsigned nfds;
	/* 0, or why the message's fds did not arrive though it came whole (EMFILE: our fd table was full; EACCES:
	 * a security module refused them). nfds is then 0: those that did arrive were closed. */
	int fds_lost;
};

struct dl_dma_map {
	uint64_t iova, size, offset;
	int fd; /* our duplicate, serves DMA_READ/WRITE */
	unsigned flags;
	bool allocated; /* from devlease_dma_alloc: the IOVA goes back to the allocator */
	void *local;    /* devlease_dma_alloc: our mapping of it */
};

struct dl_range {
	uint64_t start, size;
};

struct dl_region {
	unsigned index;
	void *addr;
	size_t len;
};

struct dl_iofd {
	unsigned region;
	uint64_t offset;
	int fd; /* -1: the device offers none */
};

struct devlease {
	int sock;
	bool closed;
	int broken; /* 0, or the -errno every later call gets (the session is unusable) */
	uint16_t next_id;
	int timeout_ms;
	/* The current call's (CLOCK_MONOTONIC ms): every wait of it, replies it sends included. Set by dl_call and
	 * dl_serve_pending, the wire's functions read it here: nothing a call serves starts another call. */
	int64_t deadline;
	uint64_t page;
	uint32_t max_xfer;
	bool reasons;
	int notice_index; /* devlease's notice irq index from VERSION, or -1 */
	unsigned info_index;

	json_object *info_json;
	struct devlease_info info;
	struct devlease_region_info *info_regions;
	struct devlease_isolation *info_isolation;
	struct devlease_fault *info_faults;
	char name[96]; /* the lease id, for messages after close */

	struct dl_region *regions;
	unsigned nregions;
	int *vectors;
	unsigned nvectors;
	int err_fd, req_fd;
	uint64_t faults_seen; /* the info's faults_total when last reported */
	bool disconnect_reported;
	struct dl_iofd *iofds;
	unsigned niofds;

	struct dl_dma_map *maps;
	unsigned nmaps;
	struct dl_range *free_iova; /* the allocator's free list, sorted */
	unsigned nfree;
};

/* errors: set the thread's message and return -err. */
int dl_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dl_check_open(const struct devlease *l, const char *what);

/* wire.c */
void dl_msg_release(struct dl_msg *m);
int dl_call(struct devlease *l, uint16_t cmd, const void *payload, size_t len, const int *fds,
	    unsigned nfds, struct dl_msg *reply, const char *what);
/* One request of a batch: its payload and fds are only read while dl_call_batch sends it. */
struct dl_request {
	uint16_t cmd;
	const void *payload;
	size_t len;
	const int *fds;
	unsigned nfds;
	const char *what;
};
/* Requests in one batch at most (a lease's setup: its interrupts and regions). */
#define DL_MAX_BATCH 16
/*
 * Sends all `n` requests, then takes their replies as they come (commands from the broker served meanwhile),
 * all within one timeout_ms: replies[i] answers reqs[i]. The first that fails (an error reply, a command
 * mismatch, fds lost, the deadline) is the batch's failure: every reply taken is released, and the session is
 * marked broken if replies were still due. dl_call is a batch of one.
 */
int dl_call_batch(struct devlease *l, const struct dl_request *reqs, unsigned n, struct dl_msg *replies);
int dl_serve_pending(struct devlease *l);
int dl_region_read_raw(struct devlease *l, unsigned index, uint64_t offset, void *buf, size_t len);

/* info.c */
int dl_parse_info(struct devlease *l, const char *text, size_t len);
void dl_free_info(struct devlease *l);
int dl_read_info(struct devlease *l);

/* dma.c */
void dl_dma_init(struct devlease *l);
void dl_dma_drop_all(struct devlease *l);
const struct dl_dma_map *dl_dma_find(const struct devlease *l, uint64_t addr, uint64_t count);

/* little-endian packing (every vfio-user field is LE; this library targets LE hosts only). */
static inline void dl_put32(uint8_t *p, uint32_t v) { __builtin_memcpy(p, &v, 4); }
static inline void dl_put64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
static inline uint32_t dl_get32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline uint64_t dl_get64(const uint8_t *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libdevlease: vfio-user is little-endian; big-endian hosts are not supported"
#endif

/* CLOCK_MONOTONIC, for deadlines and the queue's spin: the wall clock may step. */
static inline int64_t dl_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
static inline int64_t dl_mono_ms(void) { return dl_mono_us() / 1000; }

/* Why `fd` cannot be a doorbell kick (not a non-blocking eventfd), or NULL (region.c). */
const char *dl_kick_fd_problem(int fd);

#endif
