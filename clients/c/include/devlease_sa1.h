/*
 * SA-1 queue helper: rings in leased DMA memory, descriptors submitted by a
 * store to the lease's own queue page (no broker on the hot path), the
 * doorbell kicked through the queue's ioeventfd only when Q_NOTIFY.KICK_NEEDED
 * asks (datasheet rev 2 §2.3), completions found by the phase bit.
 *
 * Same error style as devlease.h: 0 / a count, or a negative errno with
 * devlease_errmsg(). A descriptor the device completes with a non-OK status
 * gives -EIO (-EPROTO for a status the datasheet does not define: a device
 * bug); the completion's `status` says which (enum devlease_sa1_status).
 */
#ifndef DEVLEASE_SA1_H
#define DEVLEASE_SA1_H

#include "devlease.h"
#include "devlease_sa1_regs.h"

#ifdef __cplusplus
extern "C" {
#endif

enum devlease_sa1_status {
	DEVLEASE_SA1_OK = SA1_ST_OK,
	DEVLEASE_SA1_BAD_OPCODE = SA1_ST_BAD_OPCODE,
	DEVLEASE_SA1_BAD_LENGTH = SA1_ST_BAD_LENGTH,
	DEVLEASE_SA1_WINDOW_VIOLATION = SA1_ST_WINDOW_VIOLATION,
	DEVLEASE_SA1_IOMMU_FAULT = SA1_ST_IOMMU_FAULT,
	DEVLEASE_SA1_DEVMEM_VIOLATION = SA1_ST_DEVMEM_VIOLATION,
	DEVLEASE_SA1_ABORTED = SA1_ST_ABORTED,
	DEVLEASE_SA1_BAD_QUEUE_CONFIG = SA1_ST_BAD_QUEUE_CONFIG,
};

/* "OK", "WINDOW_VIOLATION", …; NULL for a value the datasheet does not define. */
const char *devlease_sa1_status_name(unsigned status);

/* The lease region of the queue page: BAR2, whose slice the lease maps. */
#define DEVLEASE_SA1_QUEUE_PAGE_REGION 2u

/* A library flag (never sent to the device): no interrupt even for the last descriptor of a batch. */
#define DEVLEASE_SA1_NO_INTR 0x80u

struct devlease_sa1_desc {
	uint8_t opcode; /* SA1_OP_NOP, _COPY, _FILL, _CRC32C, _WRITE_IMM */
	uint8_t flags;  /* SA1_FLAG_INTR, _SRC_DEVMEM, _DST_DEVMEM; DEVLEASE_SA1_NO_INTR */
	uint32_t length;
	uint64_t src, dst;
	uint64_t imm; /* FILL pattern, WRITE_IMM value */
};

struct devlease_sa1_completion {
	uint64_t tag;
	uint16_t status; /* enum devlease_sa1_status, as the device wrote it */
	uint32_t result; /* CRC32C for CRC32C descriptors, else 0 */
};

struct devlease_sa1_queue;

struct devlease_sa1_queue_opts {
	unsigned entries; /* ring entries, a power of two 2..65536; 0: 256 */
	unsigned spin_us; /* busy-wait before sleeping on the interrupt; 0: 50 */
	bool no_kick;     /* leave doorbells to the device's idle poll (rev 1 behaviour, for comparisons) */
};

/* Reset the lease's queue, allocate the rings in leased memory and program the queue page. */
int devlease_sa1_queue_create(struct devlease *l, const struct devlease_sa1_queue_opts *opts,
			      struct devlease_sa1_queue **out);
/* Free the rings and the helper (before or after the lease's close). NULL is fine. */
void devlease_sa1_queue_free(struct devlease_sa1_queue *q);

/* Submit n descriptors with one doorbell; their tags are *first_tag, +1, … Returns n, -EAGAIN when
 * the ring lacks room (wait for completions), -EIO when the queue is in ERROR (reset it). Unless a
 * descriptor asks for SA1_FLAG_INTR, only the batch's last one interrupts. */
int devlease_sa1_submit(struct devlease_sa1_queue *q, const struct devlease_sa1_desc *d, unsigned n,
			uint64_t *first_tag);
/* Consume the completions the device has written (never blocks); returns how many. */
int devlease_sa1_poll(struct devlease_sa1_queue *q);
/* Wait for descriptor `tag` (spinning, then sleeping on the interrupt) up to timeout_ms. 0 with *c
 * filled on OK; -EIO / -EPROTO on a bad status (*c filled); -ETIMEDOUT; -EIO when the queue
 * stops in ERROR. */
int devlease_sa1_wait(struct devlease_sa1_queue *q, uint64_t tag, int timeout_ms,
		      struct devlease_sa1_completion *c);
/* Submit n descriptors and wait for all: 0, or the first failure (its completion in c[i]). c may be NULL. */
int devlease_sa1_run(struct devlease_sa1_queue *q, const struct devlease_sa1_desc *d, unsigned n,
		     int timeout_ms, struct devlease_sa1_completion *c);
/* The code that put the queue in ERROR, or 0 while it runs. */
unsigned devlease_sa1_error(const struct devlease_sa1_queue *q);
/* Ask the broker for a queue reset (after ERROR), then program the rings again. */
int devlease_sa1_queue_reset(struct devlease_sa1_queue *q);
/* The rings' free slots right now. */
unsigned devlease_sa1_space(const struct devlease_sa1_queue *q);

#ifdef __cplusplus
}
#endif
#endif
