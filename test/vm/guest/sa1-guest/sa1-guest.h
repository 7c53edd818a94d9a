// The guest-side SA-1 driver of the VM tests (test/vm): a static program run
// inside a QEMU guest on the SA-1 (or on one lease of it) that QEMU's
// vfio-user-pci presents as a PCI device. It drives the device the way a
// user-space driver in a VM does: guest vfio-pci behind the guest's (emulated)
// Intel IOMMU, DMA buffers in guest RAM mapped at IOVAs it chooses, BARs
// mmapped or reached through the region fd, MSI-X vectors wired to eventfds.
#pragma once
#include <stddef.h>
#include <stdint.h>

// --- datasheet values (shared/spec/sim-accelerator.md, rev 2) ---
#define SA1_VENDOR 0x1234
#define SA1_DEVICE 0x5a01
#define REG_ID 0x000
#define REG_CONTROL 0x008
#define REG_SCRATCH 0x00c
#define REG_FW_IOVA 0x028
#define REG_FW_LEN 0x030
#define REG_FW_CMD 0x034
#define REG_FW_STATUS 0x038
#define REG_FAULT_HEAD 0x040
#define REG_QCFG 0x10000
#define Q_CTRL 0x00
#define Q_STATUS 0x04
#define Q_WIN_BASE 0x08
#define Q_WIN_SIZE 0x10
#define Q_MEM_BASE 0x18
#define Q_MEM_SIZE 0x1c
#define Q_VECTOR 0x20
#define Q_XLAT 0x38
#define QP_SQ_BASE 0x00
#define QP_SQ_SIZE 0x08
#define QP_SQ_TAIL 0x0c
#define QP_SQ_HEAD 0x10
#define QP_CQ_BASE 0x18
#define QP_CQ_SIZE 0x20
#define QP_CQ_HEAD 0x24
#define QP_CQ_TAIL 0x28
#define QP_Q_ERROR 0x2c
#define QP_IRQ_MODE 0x30
#define OP_NOP 0
#define OP_COPY 1
#define OP_FILL 2
#define OP_CRC32C 3
#define SQE_INTR 1
#define ST_OK 0
#define ST_WINDOW_VIOLATION 3

// --- guest VFIO (guest-vfio.c) ---
struct vdev {
  char bdf[32];
  int container, group, fd;
  uint64_t cfg_off, bar0_off, bar2_off, bar2_size;
  int has_bar0;
  volatile uint8_t *qp; // the queue page (BAR2 page 0), mmapped
  int nvec;             // MSI-X vectors
  int *efd;             // one eventfd per vector
};
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void step(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t now_ms(void);
void vfio_open(struct vdev *d);
void vfio_dma_map(struct vdev *d, void *va, uint64_t iova, uint64_t size);
void vfio_msix(struct vdev *d);
void vfio_reset(struct vdev *d);
uint32_t bar0_read(struct vdev *d, uint32_t off);
void bar0_write(struct vdev *d, uint32_t off, uint32_t v);
int irq_wait(struct vdev *d, int vec, int ms); // 1 if the vector fired within ms

// --- the queue (sa1-queue.c) ---
struct sqe {
  uint8_t op, flags;
  uint16_t rsvd;
  uint32_t len;
  uint64_t src, dst, imm, tag;
  uint8_t rsvd2[24];
};
struct cqe {
  uint64_t tag;
  uint32_t result;
  uint16_t status, phase;
};
struct queue {
  struct vdev *d;
  uint8_t *mem; // DMA buffer: rings, then data
  uint64_t iova, size;
  uint32_t entries, tail, head;
  struct sqe *sq;
  struct cqe *cq;
};
#define SQ_OFF 0x0
#define CQ_OFF 0x1000
#define DATA_OFF 0x10000
uint32_t crc32c(const void *p, size_t n);
void q_rings(struct queue *q);
uint32_t qp_read(struct queue *q, uint32_t off);
void qp_write(struct queue *q, uint32_t off, uint32_t v);
void q_submit(struct queue *q, const struct sqe *e);
int q_complete(struct queue *q, struct cqe *out, int ms); // 1 if a completion arrived
void sa1_owner_setup(struct vdev *d, struct queue *q);  // whole device: firmware, enable, QCFG[0]
