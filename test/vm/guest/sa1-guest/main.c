// sa1-guest: drives one SA-1 queue from inside a VM (test/vm, docs/VM-TESTS.md).
//
//   sa1-guest [--owner [--device-reset]] [--iova HEX] [--bad-iova HEX] [--hold]
//
// --owner: the guest has the whole device (devlease sim directly): it loads
// firmware and programs QCFG[0] itself. Otherwise it holds a lease: the
// broker has programmed the window and translation, and the guest has only
// its queue page. Then: rings in guest RAM at --iova, MSI-X on eventfds,
// NOP/COPY/FILL/CRC32C verified, a completion taken by interrupt; a
// descriptor at --bad-iova (outside the window) faults the queue; the queue
// is reset (owner: Q_CTRL.RESET; lease: VFIO_DEVICE_RESET, which QEMU sends
// to the lease as VFIO_USER_DEVICE_RESET) and the work runs again.
// --device-reset: the owner too resets with VFIO_DEVICE_RESET (the whole
// device: firmware and QCFG[0] again), the path a lease's holder takes.
// DMA buffer: one 2 MiB huge page when the guest has one (see dma_buffer).
// --hold: afterwards, a NOP every 200 ms with a tick line every 25, until a
// NOP does not complete (the lease was revoked): one STALLED line, then idle.
// Output: DEVLEASE-VM-STEP lines, then one DEVLEASE-VM-DRIVER <json> line.
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sa1-guest.h"

#define WAIT_MS 30000 // per completion: TCG on a loaded machine is slow
#define BUF_SIZE (2u << 20)

/**
 * The DMA buffer: one 2 MiB huge page if the guest can have one (physically
 * contiguous, so the guest's IOMMU maps it as one superpage and QEMU sends
 * one DMA_MAP), else 2 MiB of small pages (512 maps: a lease bounds its
 * mappings, 1024 by default).
 */
static uint8_t *dma_buffer(int *huge) {
  int fd = open("/proc/sys/vm/nr_hugepages", O_WRONLY);
  if (fd >= 0) {
    if (write(fd, "1", 1) < 0) { /* none to be had: small pages below */ }
    close(fd);
  }
  int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED;
  void *p = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, flags | MAP_HUGETLB, -1, 0);
  *huge = p != MAP_FAILED;
  if (!*huge) p = mmap(NULL, BUF_SIZE, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) die("mmap %u bytes of guest RAM failed", BUF_SIZE);
  return p;
}

static uint64_t tag_seq = 0x1000;

static struct cqe run(struct queue *q, struct sqe e, const char *what) {
  e.tag = ++tag_seq;
  q_submit(q, &e);
  struct cqe c;
  if (!q_complete(q, &c, WAIT_MS))
    die("%s: no completion within %d ms (SQ_HEAD %u CQ_TAIL %u Q_ERROR %u)", what, WAIT_MS,
        qp_read(q, QP_SQ_HEAD), qp_read(q, QP_CQ_TAIL), qp_read(q, QP_Q_ERROR));
  if (c.tag != e.tag) die("%s: completion tag 0x%llx, expected 0x%llx", what, (unsigned long long)c.tag, (unsigned long long)e.tag);
  return c;
}

static void expect_ok(struct cqe c, const char *what) {
  if (c.status != ST_OK) die("%s: completion status %u", what, c.status);
}

static void fill_random(uint8_t *p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((seed = seed * 1103515245u + 12345u) >> 16);
}

/** Any vector's eventfd drained; returns which fired within ms, or -1. */
static int wait_any_irq(struct vdev *d, int ms) {
  struct pollfd p[64];
  int n = d->nvec < 64 ? d->nvec : 64;
  for (int i = 0; i < n; i++) p[i] = (struct pollfd){.fd = d->efd[i], .events = POLLIN};
  if (poll(p, n, ms) <= 0) return -1;
  for (int i = 0; i < n; i++)
    if (p[i].revents & POLLIN) return irq_wait(d, i, 0) ? i : -1;
  return -1;
}

static void drain_irqs(struct vdev *d) {
  for (int i = 0; i < d->nvec; i++) irq_wait(d, i, 0);
}

/** NOP, COPY, FILL, CRC32C verified; then a NOP with INTR whose completion is taken by interrupt. */
static int work(struct queue *q, const char *phase) {
  uint8_t *src = q->mem + DATA_OFF, *dst = src + 0x40000, *fill = src + 0x80000;
  uint64_t s = q->iova + DATA_OFF, dd = s + 0x40000, f = s + 0x80000;
  char what[64];

  snprintf(what, sizeof what, "%s NOP", phase);
  expect_ok(run(q, (struct sqe){.op = OP_NOP}, what), what);

  snprintf(what, sizeof what, "%s COPY", phase);
  fill_random(src, 65536, 7);
  memset(dst, 0, 65536);
  expect_ok(run(q, (struct sqe){.op = OP_COPY, .len = 65536, .src = s, .dst = dd}, what), what);
  if (memcmp(src, dst, 65536)) die("%s: destination differs from source", what);

  snprintf(what, sizeof what, "%s FILL", phase);
  memset(fill, 0xee, 1100);
  uint64_t pat = 0x0123456789abcdefull;
  expect_ok(run(q, (struct sqe){.op = OP_FILL, .len = 1001, .dst = f, .imm = pat}, what), what);
  for (int i = 0; i < 1001; i++)
    if (fill[i] != ((uint8_t *)&pat)[i % 8]) die("%s: byte %d is 0x%02x", what, i, fill[i]);
  if (fill[1001] != 0xee) die("%s: wrote past its length", what);

  snprintf(what, sizeof what, "%s CRC32C", phase);
  memcpy(src, "123456789", 9);
  struct cqe c = run(q, (struct sqe){.op = OP_CRC32C, .len = 9, .src = s}, what);
  expect_ok(c, what);
  if (c.result != 0xe3069283u) die("%s: check value 0x%08x, expected 0xe3069283", what, c.result);
  fill_random(src, 65536, 11);
  c = run(q, (struct sqe){.op = OP_CRC32C, .len = 65536, .src = s}, what);
  expect_ok(c, what);
  if (c.result != crc32c(src, 65536)) die("%s: 0x%08x, computed 0x%08x", what, c.result, crc32c(src, 65536));
  step("work", "%s nop copy fill crc32c ok", phase);

  // By interrupt: the completion ring is not looked at before a vector fires.
  drain_irqs(q->d);
  struct sqe e = {.op = OP_NOP, .flags = SQE_INTR, .tag = ++tag_seq};
  q_submit(q, &e);
  int vec = wait_any_irq(q->d, WAIT_MS);
  if (vec < 0) die("%s: no MSI-X interrupt within %d ms for a NOP with INTR", phase, WAIT_MS);
  if (!q_complete(q, &c, 0) || c.tag != e.tag || c.status != ST_OK)
    die("%s: vector %d fired but the INTR NOP's completion is not in the ring", phase, vec);
  step("irq", "%s vector %d", phase, vec);
  return vec;
}

int main(int argc, char **argv) {
  int owner = 0, hold = 0, device_reset = 0;
  uint64_t iova = 0x200000, bad = 0xf00000000000ull;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--owner")) owner = 1;
    else if (!strcmp(argv[i], "--hold")) hold = 1;
    else if (!strcmp(argv[i], "--device-reset")) device_reset = 1;
    else if (!strcmp(argv[i], "--iova") && i + 1 < argc) iova = strtoull(argv[++i], NULL, 16);
    else if (!strcmp(argv[i], "--bad-iova") && i + 1 < argc) bad = strtoull(argv[++i], NULL, 16);
    else die("usage: sa1-guest [--owner [--device-reset]] [--iova HEX] [--bad-iova HEX] [--hold] (got %s)", argv[i]);
  }
  struct vdev d = {0};
  vfio_open(&d);
  struct queue q = {.d = &d, .iova = iova, .size = BUF_SIZE};
  int huge;
  q.mem = dma_buffer(&huge);
  vfio_dma_map(&d, q.mem, iova, BUF_SIZE);
  vfio_msix(&d);
  step("bound", "%s vfio-pci, BAR2 %llu bytes, %d MSI-X vectors, DMA at iova 0x%llx (%s pages)", d.bdf,
       (unsigned long long)d.bar2_size, d.nvec, (unsigned long long)iova, huge ? "huge" : "small");
  if (owner) sa1_owner_setup(&d, &q);
  q_rings(&q);
  int vec = work(&q, "first");

  // A descriptor outside the window: WINDOW_VIOLATION, the queue goes to ERROR.
  struct sqe e = {.op = OP_COPY, .len = 4096, .src = bad, .dst = iova + DATA_OFF, .tag = ++tag_seq};
  q_submit(&q, &e);
  struct cqe c = {0};
  int got = q_complete(&q, &c, WAIT_MS);
  uint64_t end = now_ms() + WAIT_MS;
  while (qp_read(&q, QP_Q_ERROR) == 0 && now_ms() < end) usleep(1000);
  uint32_t qerr = qp_read(&q, QP_Q_ERROR);
  if (qerr != ST_WINDOW_VIOLATION) die("fault: Q_ERROR %u, expected %u (WINDOW_VIOLATION)", qerr, ST_WINDOW_VIOLATION);
  step("fault", "completion %s status %u, Q_ERROR %u", got ? "written" : "none", got ? c.status : 0, qerr);

  if (owner && !device_reset) bar0_write(&d, REG_QCFG + Q_CTRL, 3);
  else vfio_reset(&d);
  if (owner && device_reset) sa1_owner_setup(&d, &q); // the whole device was reset: firmware and QCFG again
  uint32_t after = qp_read(&q, QP_Q_ERROR);
  if (after != 0) die("reset: Q_ERROR still %u", after);
  step("reset", "%s, Q_ERROR 0", owner && !device_reset ? "Q_CTRL.RESET" : "VFIO_DEVICE_RESET");
  q_rings(&q);
  int vec2 = work(&q, "after-reset");

  // The owner leaves SCRATCH non-zero: a later machine reset must clear it (sim-direct checks).
  if (owner) bar0_write(&d, REG_SCRATCH, 0x5ca1ab1e);
  printf("DEVLEASE-VM-DRIVER {\"ok\":true,\"bdf\":\"%s\",\"owner\":%s,\"hugePage\":%s,\"reset\":\"%s\",\"vectors\":%d,\"irqVector\":%d,"
         "\"irqVectorAfterReset\":%d,\"fault\":{\"completion\":%s,\"status\":%d,\"qError\":%u}}\n",
         d.bdf, owner ? "true" : "false", huge ? "true" : "false", owner && !device_reset ? "Q_CTRL.RESET" : "VFIO_DEVICE_RESET", d.nvec, vec, vec2, got ? "true" : "false", got ? c.status : -1, qerr);
  fflush(stdout);
  if (!hold) return 0;
  for (unsigned n = 1;; n++) {
    struct sqe nop = {.op = OP_NOP, .tag = ++tag_seq};
    q_submit(&q, &nop);
    if (!q_complete(&q, &c, 10000)) {
      printf("DEVLEASE-VM-STALLED after %u NOPs (Q_ERROR %u)\n", n - 1, qp_read(&q, QP_Q_ERROR));
      fflush(stdout);
      for (;;) pause();
    }
    if (n % 25 == 0) printf("DEVLEASE-VM-TICK %u\n", n), fflush(stdout);
    usleep(200000);
  }
}
