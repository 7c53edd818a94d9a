// One SA-1 queue from the guest: rings in the DMA buffer (guest RAM at the
// IOVAs this program chose), the queue page's registers, submission and
// completion by phase bit; and, on the whole device only, the owner's part
// (firmware, CONTROL.ENABLE, QCFG[0]) that a broker does for a lease.
#include <string.h>
#include <unistd.h>

#include "sa1-guest.h"

uint32_t crc32c(const void *p, size_t n) {
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78 : c >> 1;
      table[i] = c;
    }
  uint32_t c = ~0u;
  for (const uint8_t *b = p; n--; b++) c = table[(c ^ *b) & 0xff] ^ (c >> 8);
  return ~c;
}

// Registers are 4-byte accesses: 64-bit ones are written as two halves
// (ring registers latch at the first doorbell, so the halves cannot race).
uint32_t qp_read(struct queue *q, uint32_t off) { return *(volatile uint32_t *)(q->d->qp + off); }
void qp_write(struct queue *q, uint32_t off, uint32_t v) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  *(volatile uint32_t *)(q->d->qp + off) = v;
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
static void qp_write64(struct queue *q, uint32_t off, uint64_t v) {
  qp_write(q, off, (uint32_t)v);
  qp_write(q, off + 4, (uint32_t)(v >> 32));
}

/** Program the rings (after enable or a reset): empty rings, indexes 0. */
void q_rings(struct queue *q) {
  q->entries = 64;
  q->tail = q->head = 0;
  q->sq = (struct sqe *)(q->mem + SQ_OFF);
  q->cq = (struct cqe *)(q->mem + CQ_OFF);
  memset(q->mem, 0, DATA_OFF);
  qp_write64(q, QP_SQ_BASE, q->iova + SQ_OFF);
  qp_write(q, QP_SQ_SIZE, q->entries);
  qp_write64(q, QP_CQ_BASE, q->iova + CQ_OFF);
  qp_write(q, QP_CQ_SIZE, q->entries);
  qp_write(q, QP_CQ_HEAD, 0);
  qp_write(q, QP_IRQ_MODE, 0); // interrupts only for descriptors with INTR
}

void q_submit(struct queue *q, const struct sqe *e) {
  q->sq[q->tail % q->entries] = *e;
  q->tail++;
  qp_write(q, QP_SQ_TAIL, q->tail); // (fenced: the entry is visible before the doorbell)
}

int q_complete(struct queue *q, struct cqe *out, int ms) {
  volatile struct cqe *c = &q->cq[q->head % q->entries];
  uint16_t phase = (q->head / q->entries) % 2 == 0 ? 1 : 0;
  uint64_t end = now_ms() + ms;
  while ((c->phase & 1) != phase) {
    if (now_ms() > end) return 0;
    usleep(200);
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  *out = *(struct cqe *)c;
  q->head++;
  qp_write(q, QP_CQ_HEAD, q->head);
  return 1;
}

static void bar0_write64(struct vdev *d, uint32_t off, uint64_t v) {
  bar0_write(d, off, (uint32_t)v);
  bar0_write(d, off + 4, (uint32_t)(v >> 32));
}

void sa1_owner_setup(struct vdev *d, struct queue *q) {
  if (!d->has_bar0) die("no BAR0: not the whole device");
  if (bar0_read(d, REG_ID) != 0x5a010001) die("BAR0 ID 0x%x", bar0_read(d, REG_ID));
  if (bar0_read(d, REG_FW_STATUS) != 2) {
    // A firmware image (datasheet §6) in the DMA buffer's data area: "SA1F", version, length, CRC32C.
    uint8_t *img = q->mem + DATA_OFF;
    static const char payload[] = "devlease guest firmware";
    uint32_t hdr[4] = {0, 0x00010000, sizeof payload, crc32c(payload, sizeof payload)};
    memcpy(hdr, "SA1F", 4);
    memcpy(img, hdr, 16);
    memcpy(img + 16, payload, sizeof payload);
    bar0_write64(d, REG_FW_IOVA, q->iova + DATA_OFF);
    bar0_write(d, REG_FW_LEN, 16 + sizeof payload);
    bar0_write(d, REG_FW_CMD, 1);
    uint64_t end = now_ms() + 20000;
    uint32_t st;
    while ((st = bar0_read(d, REG_FW_STATUS)) != 2) {
      if (st & 0x80000000u || now_ms() > end) die("firmware load: FW_STATUS 0x%x", st);
      usleep(1000);
    }
  }
  bar0_write(d, REG_CONTROL, 1);
  uint32_t qc = REG_QCFG; // QCFG[0]: window = the whole DMA buffer, identity translation, vector 0
  bar0_write(d, qc + Q_CTRL, 0);
  bar0_write64(d, qc + Q_WIN_BASE, q->iova);
  bar0_write64(d, qc + Q_WIN_SIZE, q->size);
  bar0_write(d, qc + Q_MEM_BASE, 0);
  bar0_write(d, qc + Q_MEM_SIZE, 0);
  bar0_write(d, qc + Q_VECTOR, 0);
  bar0_write64(d, qc + Q_XLAT, 0);
  bar0_write(d, qc + Q_CTRL, 3); // RESET, then ENABLE
}
