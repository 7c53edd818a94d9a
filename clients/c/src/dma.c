/* DMA memory the caller brings (fd-backed), mapped through the broker at IOVAs inside the lease's
 * window, and a small first-fit allocator handing out memfd buffers. The lease keeps a duplicate of
 * every mapped fd, to serve the broker's DMA_READ/DMA_WRITE (docs/PROTOCOL.md). */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void dl_dma_init(struct devlease *l)
{
	l->free_iova = calloc(1, sizeof(*l->free_iova));
	if (l->free_iova && l->info.has_iova_window && l->info.iova_size) {
		l->free_iova[0] = (struct dl_range){ l->info.iova_base, l->info.iova_size };
		l->nfree = 1;
	}
}

void dl_dma_drop_all(struct devlease *l)
{
	for (unsigned i = 0; i < l->nmaps; i++) {
		close(l->maps[i].fd);
		if (l->maps[i].local) munmap(l->maps[i].local, l->maps[i].size);
	}
	free(l->maps);
	l->maps = NULL;
	l->nmaps = 0;
	free(l->free_iova);
	l->free_iova = NULL;
	l->nfree = 0;
}

const struct dl_dma_map *dl_dma_find(const struct devlease *l, uint64_t addr, uint64_t count)
{
	for (unsigned i = 0; i < l->nmaps; i++) {
		const struct dl_dma_map *m = &l->maps[i];
		if (addr >= m->iova && count <= m->size && addr - m->iova <= m->size - count) return m;
	}
	return NULL;
}

static uint64_t iova_alloc(struct devlease *l, uint64_t size)
{
	for (unsigned i = 0; i < l->nfree; i++) {
		struct dl_range *f = &l->free_iova[i];
		uint64_t start = (f->start + l->page - 1) & ~(l->page - 1);
		if (start < f->start || start - f->start > f->size || f->size - (start - f->start) < size) continue;
		uint64_t end = f->start + f->size;
		struct dl_range before = { f->start, start - f->start }, after = { start + size, end - start - size };
		struct dl_range pieces[2];
		unsigned np = 0;
		if (before.size) pieces[np++] = before;
		if (after.size) pieces[np++] = after;
		struct dl_range *n = realloc(l->free_iova, sizeof(*n) * (l->nfree + 1));
		if (!n) return UINT64_MAX;
		l->free_iova = n;
		memmove(&n[i + np], &n[i + 1], sizeof(*n) * (l->nfree - i - 1)); /* entry i becomes the pieces */
		memcpy(&n[i], pieces, sizeof(*n) * np);
		l->nfree = l->nfree - 1 + np;
		return start;
	}
	return UINT64_MAX;
}

static void iova_free(struct devlease *l, uint64_t start, uint64_t size)
{
	struct dl_range *n = realloc(l->free_iova, sizeof(*n) * (l->nfree + 1));
	if (!n) return; /* the range is lost to the allocator, not to the device */
	l->free_iova = n;
	unsigned i = 0;
	while (i < l->nfree && n[i].start < start) i++;
	memmove(&n[i + 1], &n[i], sizeof(*n) * (l->nfree - i));
	n[i] = (struct dl_range){ start, size };
	l->nfree++;
	for (unsigned j = 0; j + 1 < l->nfree;) { /* join neighbours */
		if (n[j].start + n[j].size == n[j + 1].start) {
			n[j].size += n[j + 1].size;
			memmove(&n[j + 1], &n[j + 2], sizeof(*n) * (l->nfree - j - 2));
			l->nfree--;
		} else {
			j++;
		}
	}
}

static int map(struct devlease *l, int fd, uint64_t offset, uint64_t iova, uint64_t size, unsigned flags, void *local)
{
	if (size == 0 || ((iova | size | offset) & (l->page - 1)))
		return dl_fail(EINVAL, "dma map: iova 0x%llx, size 0x%llx and offset 0x%llx must be non-zero multiples of the lease's 0x%llx-byte page",
			       (unsigned long long)iova, (unsigned long long)size, (unsigned long long)offset, (unsigned long long)l->page);
	if (!flags || (flags & ~(DEVLEASE_DMA_READ | DEVLEASE_DMA_WRITE)))
		return dl_fail(EINVAL, "dma map: flags must be DEVLEASE_DMA_READ and/or DEVLEASE_DMA_WRITE, got 0x%x", flags);
	const struct devlease_info *in = &l->info;
	if (!in->has_iova_window || iova < in->iova_base || size > in->iova_size || iova - in->iova_base > in->iova_size - size)
		return dl_fail(EPERM, "dma map: [0x%llx, +0x%llx) is outside the lease's IOVA window [0x%llx, +0x%llx)",
			       (unsigned long long)iova, (unsigned long long)size, (unsigned long long)in->iova_base,
			       (unsigned long long)in->iova_size);
	if (l->nmaps >= DL_MAX_DMA_MAPS) return dl_fail(ENOSPC, "dma map: %u maps already", l->nmaps);
	int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (dup < 0) return dl_fail(errno, "dma map: fd %d: %s", fd, strerror(errno));
	struct dl_dma_map *n = realloc(l->maps, sizeof(*n) * (l->nmaps + 1));
	if (!n) {
		close(dup);
		return dl_fail(ENOMEM, "no memory");
	}
	l->maps = n;
	/* Recorded before sending: the broker may DMA as soon as it has processed the map. */
	l->maps[l->nmaps++] = (struct dl_dma_map){ .iova = iova, .size = size, .offset = offset, .fd = dup, .flags = flags, .local = local, .allocated = local != NULL };
	uint8_t p[32];
	dl_put32(p, 32);
	dl_put32(p + 4, flags);
	dl_put64(p + 8, offset);
	dl_put64(p + 16, iova);
	dl_put64(p + 24, size);
	struct dl_msg r;
	int rc = dl_call(l, VFIO_USER_DMA_MAP, p, sizeof(p), &dup, 1, &r, "dma map");
	if (rc < 0) {
		for (unsigned i = 0; i < l->nmaps; i++)
			if (l->maps[i].fd == dup) l->maps[i] = l->maps[--l->nmaps];
		close(dup);
		return rc;
	}
	dl_msg_release(&r);
	return 0;
}

int devlease_dma_map(struct devlease *l, int fd, uint64_t offset, uint64_t iova, uint64_t size, unsigned flags)
{
	int rc = dl_check_open(l, "dma map");
	return rc < 0 ? rc : map(l, fd, offset, iova, size, flags, NULL);
}

static int unmap(struct devlease *l, uint64_t iova, uint64_t size)
{
	uint8_t p[24];
	dl_put32(p, 24);
	dl_put32(p + 4, 0);
	dl_put64(p + 8, iova);
	dl_put64(p + 16, size);
	struct dl_msg r;
	int rc = dl_call(l, VFIO_USER_DMA_UNMAP, p, sizeof(p), NULL, 0, &r, "dma unmap");
	if (rc < 0) return rc;
	dl_msg_release(&r);
	for (unsigned i = 0; i < l->nmaps;) { /* the maps inside the range are gone at the device */
		struct dl_dma_map *m = &l->maps[i];
		if (m->iova >= iova && m->iova - iova <= size && m->size <= size - (m->iova - iova)) {
			close(m->fd);
			if (m->local) munmap(m->local, m->size);
			if (m->allocated) iova_free(l, m->iova, m->size);
			*m = l->maps[--l->nmaps];
		} else {
			i++;
		}
	}
	return 0;
}

int devlease_dma_unmap(struct devlease *l, uint64_t iova, uint64_t size)
{
	int rc = dl_check_open(l, "dma unmap");
	if (rc < 0) return rc;
	for (unsigned i = 0; i < l->nmaps; i++)
		if (l->maps[i].iova == iova && l->maps[i].size == size && l->maps[i].allocated)
			return dl_fail(EINVAL, "dma unmap: 0x%llx is a devlease_dma_alloc buffer: devlease_dma_free it", (unsigned long long)iova);
	return unmap(l, iova, size);
}

int devlease_dma_alloc(struct devlease *l, size_t size, struct devlease_buf *out)
{
	int rc = dl_check_open(l, "dma alloc");
	if (rc < 0) return rc;
	if (!out) return dl_fail(EINVAL, "dma alloc: out is NULL");
	memset(out, 0, sizeof(*out));
	if (size == 0 || size > (1ull << 40)) return dl_fail(EINVAL, "dma alloc: size %zu is not a buffer size", size);
	uint64_t bytes = (size + l->page - 1) & ~(l->page - 1);
	uint64_t iova = iova_alloc(l, bytes);
	if (iova == UINT64_MAX) return dl_fail(ENOSPC, "dma alloc: no %llu free bytes left in the lease's IOVA window", (unsigned long long)bytes);
	int fd = memfd_create("devlease-dma", MFD_CLOEXEC);
	void *a = MAP_FAILED;
	if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0 ||
	    (a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		rc = dl_fail(errno, "dma alloc: memfd of %llu bytes: %s", (unsigned long long)bytes, strerror(errno));
	} else {
		rc = map(l, fd, 0, iova, bytes, DEVLEASE_DMA_READ | DEVLEASE_DMA_WRITE, a);
	}
	if (fd >= 0) close(fd); /* the map keeps its own duplicate */
	if (rc < 0) {
		if (a != MAP_FAILED) munmap(a, bytes);
		iova_free(l, iova, bytes);
		return rc;
	}
	*out = (struct devlease_buf){ .addr = a, .iova = iova, .size = bytes };
	return 0;
}

int devlease_dma_free(struct devlease *l, struct devlease_buf *buf)
{
	if (!buf || !buf->addr) return 0;
	if (l && l->closed) { /* close() already unmapped it everywhere */
		memset(buf, 0, sizeof(*buf));
		return 0;
	}
	int rc = dl_check_open(l, "dma free");
	if (rc < 0) return rc;
	for (unsigned i = 0; i < l->nmaps; i++) {
		if (l->maps[i].local != buf->addr) continue;
		rc = unmap(l, l->maps[i].iova, l->maps[i].size);
		if (rc == 0) memset(buf, 0, sizeof(*buf));
		return rc;
	}
	return dl_fail(ENOENT, "dma free: %p is not a buffer of this lease", buf->addr);
}
