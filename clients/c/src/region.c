/* Region access through the broker (REGION_READ/WRITE, split into transfers the broker takes), the
 * device's ioeventfds (GET_REGION_IO_FDS), and the queue reset. */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int dl_region_read_raw(struct devlease *l, unsigned index, uint64_t offset, void *buf, size_t len)
{
	for (size_t done = 0; done < len;) {
		uint32_t n = (uint32_t)(len - done < l->max_xfer ? len - done : l->max_xfer);
		uint8_t req[16];
		dl_put64(req, offset + done);
		dl_put32(req + 8, index);
		dl_put32(req + 12, n);
		struct dl_msg r;
		int rc = dl_call(l, VFIO_USER_REGION_READ, req, sizeof(req), NULL, 0, &r, "region read");
		if (rc < 0) return rc;
		if (r.payload_len != 16u + n || dl_get32(r.payload + 12) != n || r.nfds) {
			size_t got = r.payload_len;
			dl_msg_release(&r);
			l->broken = -EPROTO;
			return dl_fail(EPROTO, "region %u read: the reply has %zu bytes for a %u-byte read", index, got, n);
		}
		memcpy((uint8_t *)buf + done, r.payload + 16, n);
		dl_msg_release(&r);
		done += n;
	}
	return 0;
}

int devlease_region_read(struct devlease *l, unsigned index, uint64_t offset, void *buf, size_t len)
{
	int rc = dl_check_open(l, "region read");
	if (rc < 0) return rc;
	if (!buf && len) return dl_fail(EINVAL, "region read: buf is NULL");
	return dl_region_read_raw(l, index, offset, buf, len);
}

int devlease_region_write(struct devlease *l, unsigned index, uint64_t offset, const void *buf, size_t len)
{
	int rc = dl_check_open(l, "region write");
	if (rc < 0) return rc;
	if (!buf && len) return dl_fail(EINVAL, "region write: buf is NULL");
	uint8_t *req = malloc(16 + (len < l->max_xfer ? len : l->max_xfer));
	if (!req) return dl_fail(ENOMEM, "no memory");
	for (size_t done = 0; done < len && rc == 0;) {
		uint32_t n = (uint32_t)(len - done < l->max_xfer ? len - done : l->max_xfer);
		dl_put64(req, offset + done);
		dl_put32(req + 8, index);
		dl_put32(req + 12, n);
		memcpy(req + 16, (const uint8_t *)buf + done, n);
		struct dl_msg r;
		rc = dl_call(l, VFIO_USER_REGION_WRITE, req, 16 + n, NULL, 0, &r, "region write");
		if (rc == 0) dl_msg_release(&r);
		done += n;
	}
	free(req);
	return rc;
}

int devlease_reset(struct devlease *l)
{
	int rc = dl_check_open(l, "reset");
	if (rc < 0) return rc;
	struct dl_msg r;
	rc = dl_call(l, VFIO_USER_DEVICE_RESET, NULL, 0, NULL, 0, &r, "queue reset");
	if (rc == 0) dl_msg_release(&r);
	return rc;
}

/*
 * Why `fd` cannot be a doorbell kick, or NULL. The kick is a write(2) in devlease_sa1_submit to an fd the broker
 * chose: a blocking eventfd whose counter stands at 0xfffffffffffffffe would hold that write, and the caller,
 * for good. It must be an eventfd whose open file description is non-blocking; that flag is the description's,
 * shared with the sender, so it is checked, never set here. Checked once, when the SA-1 queue is made
 * (sa1_queue.c), not for every io fd: libvfio-user's own servers register blocking eventfds, which a caller
 * that kicks them itself (devlease_io_eventfd) may take.
 */
const char *dl_kick_fd_problem(int fd)
{
	char path[48], link[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0) return "it cannot be inspected (/proc/self/fd)";
	link[n] = 0;
	if (strcmp(link, "anon_inode:[eventfd]") != 0) return "it is not an eventfd";
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || !(fl & O_NONBLOCK)) return "it is a blocking eventfd (no O_NONBLOCK)";
	return NULL;
}

/* GET_REGION_IO_FDS: the fd of the sub-region holding `offset`, or -1 (-ENOTSUP/-ENOSPC: none offered). */
static int fetch_io_fd(struct devlease *l, unsigned region, uint64_t offset, int *fd)
{
	uint32_t argsz = 16 + 40 * 64;
	*fd = -1;
	for (int attempt = 0;; attempt++) {
		uint8_t req[16] = { 0 };
		dl_put32(req, argsz);
		dl_put32(req + 8, region);
		struct dl_msg r;
		int rc = dl_call(l, VFIO_USER_DEVICE_GET_REGION_IO_FDS, req, sizeof(req), NULL, 0, &r, "region io fds");
		if (rc < 0) return rc;
		uint32_t want = r.payload_len >= 16 ? dl_get32(r.payload) : 0;
		uint32_t count = r.payload_len >= 16 ? dl_get32(r.payload + 12) : 0;
		if (r.payload_len < 16 || count > 4096) {
			dl_msg_release(&r);
			l->broken = -EPROTO;
			return dl_fail(EPROTO, "region %u io fds: malformed reply", region);
		}
		if (r.payload_len < 16 + 40ull * count) {
			dl_msg_release(&r);
			if (attempt == 0 && want > argsz && want <= DL_MAX_XFER) {
				argsz = want;
				continue;
			}
			l->broken = -EPROTO;
			return dl_fail(EPROTO, "region %u io fds: %u sub-regions, payload too short", region, count);
		}
		for (uint32_t i = 0; i < count; i++) {
			const uint8_t *e = r.payload + 16 + 40 * i;
			uint64_t off = dl_get64(e), size = dl_get64(e + 8);
			uint32_t idx = dl_get32(e + 16);
			if (idx >= r.nfds) {
				dl_msg_release(&r);
				l->broken = -EPROTO;
				return dl_fail(EPROTO, "region %u io fds: fd_index %u beyond the %u fds sent", region, idx, r.nfds);
			}
			if (*fd < 0 && off <= offset && offset < off + (size ? size : 1)) {
				*fd = r.fds[idx];
				r.fds[idx] = -1; /* ours now; the others are closed with the message */
			}
		}
		dl_msg_release(&r);
		return 0;
	}
}

int devlease_io_eventfd(struct devlease *l, unsigned region, uint64_t offset)
{
	int rc = dl_check_open(l, "io eventfd");
	if (rc < 0) return rc;
	for (unsigned i = 0; i < l->niofds; i++)
		if (l->iofds[i].region == region && l->iofds[i].offset == offset)
			return l->iofds[i].fd >= 0 ? l->iofds[i].fd
						   : dl_fail(ENOTSUP, "the device offers no ioeventfd at region %u offset 0x%llx",
							     region, (unsigned long long)offset);
	if (l->niofds >= 64) return dl_fail(ENOSPC, "io eventfd: 64 asked for already");
	int fd;
	rc = fetch_io_fd(l, region, offset, &fd);
	if (rc == -ENOTSUP || rc == -ENOSPC) fd = -1; /* an older device, or too many queues for one message */
	else if (rc < 0) return rc;
	struct dl_iofd *n = realloc(l->iofds, sizeof(*n) * (l->niofds + 1));
	if (!n) {
		if (fd >= 0) close(fd);
		return dl_fail(ENOMEM, "no memory");
	}
	l->iofds = n;
	l->iofds[l->niofds++] = (struct dl_iofd){ .region = region, .offset = offset, .fd = fd };
	return fd >= 0 ? fd : dl_fail(ENOTSUP, "the device offers no ioeventfd at region %u offset 0x%llx", region,
				      (unsigned long long)offset);
}
