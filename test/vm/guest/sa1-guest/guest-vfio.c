// Guest VFIO plumbing: bind the device to vfio-pci, a type1 container on the
// guest's IOMMU group, region offsets, the queue page mmapped, MSI-X vectors
// wired to eventfds, DMA maps, and VFIO_DEVICE_RESET (a secondary bus reset
// of the root port the device sits behind: QEMU turns it into
// VFIO_USER_DEVICE_RESET on the device's socket).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "sa1-guest.h"

void die(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  for (char *c = msg; *c; c++) if (*c == '"' || *c == '\\') *c = '\'';
  printf("DEVLEASE-VM-DRIVER {\"error\":\"%s\"}\n", msg);
  fflush(stdout);
  exit(1);
}

void step(const char *name, const char *fmt, ...) {
  va_list ap;
  printf("DEVLEASE-VM-STEP %s ", name);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

uint64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) die("open %s: %s", path, strerror(errno));
  if (write(fd, text, strlen(text)) < 0) die("write %s to %s: %s", text, path, strerror(errno));
  close(fd);
}

static unsigned read_hex(const char *dir, const char *f) {
  char path[256], buf[32] = {0};
  snprintf(path, sizeof path, "%s/%s", dir, f);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? (unsigned)strtoul(buf, NULL, 16) : 0;
}

/** The one 1234:5a01 on the guest's PCI bus. */
static void find_device(struct vdev *d) {
  DIR *dir = opendir("/sys/bus/pci/devices");
  if (!dir) die("opendir /sys/bus/pci/devices: %s", strerror(errno));
  int found = 0;
  for (struct dirent *e; (e = readdir(dir));) {
    if (e->d_name[0] == '.') continue;
    char p[320];
    snprintf(p, sizeof p, "/sys/bus/pci/devices/%.255s", e->d_name);
    if (read_hex(p, "vendor") == SA1_VENDOR && read_hex(p, "device") == SA1_DEVICE) {
      snprintf(d->bdf, sizeof d->bdf, "%.31s", e->d_name);
      found++;
    }
  }
  closedir(dir);
  if (found != 1) die("expected one 1234:5a01 device on the guest's PCI bus, found %d", found);
}

static void region(struct vdev *d, unsigned index, uint64_t *off, uint64_t *size) {
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = index};
  if (ioctl(d->fd, VFIO_DEVICE_GET_REGION_INFO, &ri) < 0) die("REGION_INFO %u: %s", index, strerror(errno));
  *off = ri.offset;
  *size = ri.size;
}

void vfio_open(struct vdev *d) {
  find_device(d);
  char p[256], link[256];
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/driver_override", d->bdf);
  write_file(p, "vfio-pci");
  write_file("/sys/bus/pci/drivers_probe", d->bdf);
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/driver", d->bdf);
  ssize_t n = readlink(p, link, sizeof link - 1);
  if (n < 0 || !strstr((link[n] = 0, link), "vfio-pci")) die("%s not bound to vfio-pci", d->bdf);
  snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/iommu_group", d->bdf);
  n = readlink(p, link, sizeof link - 1);
  if (n < 0) die("%s has no iommu_group (no IOMMU in the guest? intel_iommu=on and -device intel-iommu)", d->bdf);
  link[n] = 0;
  char gpath[64];
  snprintf(gpath, sizeof gpath, "/dev/vfio/%s", strrchr(link, '/') + 1);

  d->container = open("/dev/vfio/vfio", O_RDWR);
  if (d->container < 0) die("open /dev/vfio/vfio: %s", strerror(errno));
  d->group = open(gpath, O_RDWR);
  if (d->group < 0) die("open %s: %s", gpath, strerror(errno));
  struct vfio_group_status gs = {.argsz = sizeof gs};
  ioctl(d->group, VFIO_GROUP_GET_STATUS, &gs);
  if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) die("group %s not viable", gpath);
  if (ioctl(d->group, VFIO_GROUP_SET_CONTAINER, &d->container) < 0) die("SET_CONTAINER: %s", strerror(errno));
  if (ioctl(d->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) die("SET_IOMMU type1v2: %s", strerror(errno));
  d->fd = ioctl(d->group, VFIO_GROUP_GET_DEVICE_FD, d->bdf);
  if (d->fd < 0) die("GET_DEVICE_FD %s: %s", d->bdf, strerror(errno));

  uint64_t size;
  region(d, VFIO_PCI_CONFIG_REGION_INDEX, &d->cfg_off, &size);
  region(d, VFIO_PCI_BAR0_REGION_INDEX, &d->bar0_off, &size);
  d->has_bar0 = size > 0;
  region(d, VFIO_PCI_BAR2_REGION_INDEX, &d->bar2_off, &d->bar2_size);
  if (d->bar2_size < 4096) die("BAR2 (queue pages) is %llu bytes", (unsigned long long)d->bar2_size);
  // Memory decoding and bus mastering on (DMA is refused while bus master is clear).
  uint16_t cmd = 0;
  if (pread(d->fd, &cmd, 2, d->cfg_off + 4) != 2) die("config read: %s", strerror(errno));
  cmd |= 0x6;
  if (pwrite(d->fd, &cmd, 2, d->cfg_off + 4) != 2) die("config write: %s", strerror(errno));
  // The queue page: the first page of BAR2 (a lease's BAR2 is its one page).
  void *qp = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, (off_t)d->bar2_off);
  if (qp == MAP_FAILED) die("mmap BAR2: %s", strerror(errno));
  d->qp = qp;
}

void vfio_dma_map(struct vdev *d, void *va, uint64_t iova, uint64_t size) {
  struct vfio_iommu_type1_dma_map m = {
      .argsz = sizeof m,
      .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)va,
      .iova = iova,
      .size = size,
  };
  if (ioctl(d->container, VFIO_IOMMU_MAP_DMA, &m) < 0)
    die("MAP_DMA iova 0x%llx size 0x%llx: %s", (unsigned long long)iova, (unsigned long long)size, strerror(errno));
}

void vfio_msix(struct vdev *d) {
  struct vfio_irq_info ii = {.argsz = sizeof ii, .index = VFIO_PCI_MSIX_IRQ_INDEX};
  if (ioctl(d->fd, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0) die("IRQ_INFO MSI-X: %s", strerror(errno));
  if (ii.count == 0) die("the device has no MSI-X vectors (no MSI-X capability in its config space)");
  d->nvec = (int)ii.count;
  d->efd = calloc(d->nvec, sizeof *d->efd);
  size_t len = sizeof(struct vfio_irq_set) + sizeof(int) * d->nvec;
  struct vfio_irq_set *s = calloc(1, len);
  s->argsz = len;
  s->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  s->index = VFIO_PCI_MSIX_IRQ_INDEX;
  s->start = 0;
  s->count = d->nvec;
  for (int i = 0; i < d->nvec; i++) {
    d->efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ((int *)s->data)[i] = d->efd[i];
  }
  if (ioctl(d->fd, VFIO_DEVICE_SET_IRQS, s) < 0) die("SET_IRQS MSI-X x%d: %s", d->nvec, strerror(errno));
  free(s);
}

void vfio_reset(struct vdev *d) {
  if (ioctl(d->fd, VFIO_DEVICE_RESET) < 0) die("VFIO_DEVICE_RESET: %s", strerror(errno));
}

uint32_t bar0_read(struct vdev *d, uint32_t off) {
  uint32_t v;
  if (pread(d->fd, &v, 4, d->bar0_off + off) != 4) die("BAR0 read 0x%x: %s", off, strerror(errno));
  return v;
}

void bar0_write(struct vdev *d, uint32_t off, uint32_t v) {
  if (pwrite(d->fd, &v, 4, d->bar0_off + off) != 4) die("BAR0 write 0x%x: %s", off, strerror(errno));
}

int irq_wait(struct vdev *d, int vec, int ms) {
  struct pollfd p = {.fd = d->efd[vec], .events = POLLIN};
  if (poll(&p, 1, ms) <= 0) return 0;
  uint64_t n;
  return read(d->efd[vec], &n, 8) == 8;
}
