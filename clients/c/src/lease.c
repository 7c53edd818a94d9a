/*
 * A lease: connect with the lease request in VERSION, read the info region,
 * map the leased regions through their slice fds, register eventfds for the
 * vectors and the ERR/REQ notices. close() releases everything, once.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define VFIO_REGION_INFO_FLAG_MMAP (1u << 2)
/* Every power of two from 4 KiB to 2^52: we align our maps to whatever the broker's smallest page is. */
#define CLIENT_PGSIZES 9007199254736896LL

static int open_socket(const char *path, int timeout_ms)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return dl_fail(ENAMETOOLONG, "socket path %.60s... is longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) return dl_fail(errno, "socket: %s", strerror(errno));
	/*
	 * A non-blocking AF_UNIX connect completes or fails at once; EAGAIN says the listener's backlog is full, and
	 * the socket is then not connecting (unlike TCP's EINPROGRESS): polling it for POLLOUT returned at once and
	 * the first send failed ENOTCONN. So the connect itself is tried again, every millisecond or so, until the
	 * deadline: the broker accepts its backlog in bursts.
	 */
	int64_t start = dl_mono_ms();
	int err;
	for (;;) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) return fd;
		err = errno;
		if (err == EINTR) continue;
		if (err != EAGAIN) break;
		if (dl_mono_ms() - start >= timeout_ms) {
			close(fd);
			return dl_fail(ETIMEDOUT, "connect %s: the broker's listen backlog stayed full for %d ms", path, timeout_ms);
		}
		struct timespec pause = { 0, 1000000 };
		nanosleep(&pause, NULL);
	}
	close(fd);
	if (err == ENOENT || err == ECONNREFUSED) return dl_fail(err, "no broker is listening on %s (%s)", path, strerror(err));
	return dl_fail(err, "connect %s: %s", path, strerror(err));
}

static int version(struct devlease *l, const char *request_json)
{
	json_object *request = NULL;
	if (request_json) {
		request = json_tokener_parse(request_json);
		if (!request || !json_object_is_type(request, json_type_object)) {
			json_object_put(request);
			return dl_fail(EINVAL, "request_json is not a JSON object: %.80s", request_json);
		}
	}
	json_object *dl = json_object_new_object(), *caps = json_object_new_object(), *top = json_object_new_object();
	json_object_object_add(dl, "error_reason", json_object_new_boolean(1));
	json_object_object_add(dl, "request", request ? request : json_object_new_object());
	json_object_object_add(caps, "max_msg_fds", json_object_new_int(DL_MAX_FDS));
	json_object_object_add(caps, "max_data_xfer_size", json_object_new_int(DL_MAX_XFER));
	json_object_object_add(caps, "max_dma_maps", json_object_new_int(65535));
	json_object_object_add(caps, "pgsizes", json_object_new_int64(CLIENT_PGSIZES));
	json_object_object_add(caps, "devlease", dl);
	json_object_object_add(top, "capabilities", caps);
	const char *text = json_object_to_json_string_ext(top, JSON_C_TO_STRING_PLAIN);
	size_t tlen = strlen(text);
	uint8_t *p = malloc(4 + tlen + 1);
	if (!p) {
		json_object_put(top);
		return dl_fail(ENOMEM, "no memory");
	}
	memset(p, 0, 4); /* major 0, minor 0 */
	memcpy(p + 4, text, tlen + 1);
	json_object_put(top);
	struct dl_msg r;
	int rc = dl_call(l, VFIO_USER_VERSION, p, 4 + tlen + 1, NULL, 0, &r, "lease refused");
	free(p);
	if (rc < 0) return rc;
	rc = -EPROTO;
	json_object *j = NULL, *c, *v;
	if (r.payload_len < 4 || r.payload[0] || r.payload[1]) {
		dl_fail(EPROTO, "bad VERSION reply: %s", r.payload_len < 4 ? "shorter than 4 bytes" : "major version is not 0");
		goto out;
	}
	size_t jlen = strnlen((const char *)r.payload + 4, r.payload_len - 4);
	json_tokener *tok = json_tokener_new();
	if (tok) j = json_tokener_parse_ex(tok, (const char *)r.payload + 4, (int)jlen);
	if (tok) json_tokener_free(tok);
	if (!j || !json_object_is_type(j, json_type_object) || !json_object_object_get_ex(j, "capabilities", &c) ||
	    !json_object_is_type(c, json_type_object)) {
		dl_fail(EPROTO, "bad VERSION reply: no capabilities object in its JSON");
		goto out;
	}
	l->page = 4096;
	if (json_object_object_get_ex(c, "pgsizes", &v)) {
		/* As u64: libvfio-user sends 0xfffffffffffff000, above INT64_MAX, which json_object_get_int64 clamps to
		 * INT64_MAX (a mask whose lowest page is 1 byte). A negative number reads 0, refused below. */
#if JSON_C_VERSION_NUM >= ((0 << 16) | (14 << 8))
		uint64_t ps = json_object_get_uint64(v);
#else
		/* json-c before 0.14 has no u64 getter: the number's own text (a negative one reads 0). */
		const char *text = json_object_to_json_string(v);
		uint64_t ps = text[0] == '-' ? 0 : strtoull(text, NULL, 10);
#endif
		if (!json_object_is_type(v, json_type_int) || ps == 0) {
			dl_fail(EPROTO, "bad VERSION reply: pgsizes is not a page-size mask");
			goto out;
		}
		l->page = ps & -ps;
	}
	l->max_xfer = 1048576; /* the spec's default */
	if (json_object_object_get_ex(c, "max_data_xfer_size", &v)) {
		int64_t x = json_object_get_int64(v);
		if (x <= 0) {
			dl_fail(EPROTO, "bad VERSION reply: max_data_xfer_size is not positive");
			goto out;
		}
		l->max_xfer = x < (int64_t)l->max_xfer ? (uint32_t)x : l->max_xfer;
	}
	if (l->max_xfer > DL_MAX_XFER) l->max_xfer = DL_MAX_XFER;
	l->info_index = 9;
	if (json_object_object_get_ex(c, "devlease", &v) && json_object_is_type(v, json_type_object)) {
		json_object *x;
		if (json_object_object_get_ex(v, "error_reason", &x)) l->reasons = json_object_get_boolean(x);
		if (json_object_object_get_ex(v, "infoRegion", &x)) {
			int idx = json_object_get_int(x);
			if (!json_object_is_type(x, json_type_int) || idx < 0 || idx > 4096) {
				dl_fail(EPROTO, "bad VERSION reply: devlease.infoRegion is not a region index");
				goto out;
			}
			l->info_index = (unsigned)idx;
		}
		/* A broker that offers devlease's notice irq signals per-queue faults there, never on ERR
		 * (ERR means unrecoverable, as QEMU treats it): the ERR eventfd is wired to both. */
		l->notice_index = -1;
		if (json_object_object_get_ex(v, "noticeIrq", &x)) {
			int idx = json_object_get_int(x);
			if (!json_object_is_type(x, json_type_int) || idx < 5 || idx > 4096) {
				dl_fail(EPROTO, "bad VERSION reply: devlease.noticeIrq is not an irq index above the standard five");
				goto out;
			}
			l->notice_index = idx;
		}
	}
	rc = 0;
out:
	json_object_put(j);
	dl_msg_release(&r);
	if (rc < 0) l->broken = rc;
	return rc;
}

/*
 * REGION_INFO for `index`: size, flags, the mmap offset on the fd, and the fd (or -1): a slice fd (offset 0), or
 * for an audited slice of a kernel device the device fd itself, handed over once (docs/AUDITED-SLICES.md).
 * Retries once with the argsz asked for.
 */
static int region_info(struct devlease *l, unsigned index, uint64_t *size, uint32_t *flags, uint64_t *offset,
		       int *fd)
{
	uint32_t argsz = 128;
	*fd = -1;
	for (int attempt = 0;; attempt++) {
		uint8_t req[32] = { 0 };
		dl_put32(req, argsz);
		dl_put32(req + 8, index);
		struct dl_msg r;
		int rc = dl_call(l, VFIO_USER_DEVICE_GET_REGION_INFO, req, sizeof(req), NULL, 0, &r, "region info");
		if (rc < 0) return rc;
		if (r.payload_len < 32 || r.nfds > 1) {
			dl_msg_release(&r);
			l->broken = -EPROTO;
			return dl_fail(EPROTO, "region %u info: the reply has %zu bytes and %u fds (needs 32 bytes, at most 1 fd)",
				       index, r.payload_len, r.nfds);
		}
		uint32_t want = dl_get32(r.payload);
		if (want > argsz && attempt == 0 && want <= 65536) {
			dl_msg_release(&r);
			argsz = want;
			continue;
		}
		*flags = dl_get32(r.payload + 4);
		*size = dl_get64(r.payload + 16);
		*offset = dl_get64(r.payload + 24);
		if (r.nfds) {
			*fd = r.fds[0];
			r.nfds = 0;
		}
		dl_msg_release(&r);
		return 0;
	}
}

/* A SET_IRQS payload (vfio_irq_set without its data: the eventfds go as the message's fds). */
static void irq_set(uint8_t p[20], unsigned index, unsigned start, unsigned n)
{
	dl_put32(p, 20);
	dl_put32(p + 4, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER);
	dl_put32(p + 8, index);
	dl_put32(p + 12, start);
	dl_put32(p + 16, n);
}

/* Maps region `index`'s slice from the REGION_INFO reply's fd (closed here); a mediated region (no fd) is skipped. */
static int map_region(struct devlease *l, unsigned index, uint64_t size, uint64_t offset, int fd, int *audited)
{
	if (fd < 0) return 0; /* mediated: devlease_region_read/write */
	if (size == 0 || size > (1ull << 40)) {
		close(fd);
		return dl_fail(EPROTO, "region %u: size %llu is not a slice's", index, (unsigned long long)size);
	}
	/* Exactly the slice, at its offset on the fd; an audited slice's device fd is closed here, before
	 * devlease_connect returns, as the broker's audit expects. */
	void *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
	int err = errno;
	close(fd); /* the mapping keeps the description alive; its release is what the broker watches */
	if (offset != 0) *audited = 1;
	if (a == MAP_FAILED) return dl_fail(err, "region %u: mmap of its slice failed: %s", index, strerror(err));
	l->regions[l->nregions++] = (struct dl_region){ .index = index, .addr = a, .len = size };
	return 0;
}

/*
 * The lease's setup as one batch (dl_call_batch): the vectors' SET_IRQS, ERR, devlease's notice and REQ, then
 * every region's REGION_INFO, all sent before any reply is read, so connect waits for one round trip here
 * instead of one per request (as the TypeScript client's; issue 16). The interrupts go first: the broker relays
 * the vectors to the device and answers in order, so the replies then come together.
 */
static int setup(struct devlease *l)
{
	int audited = 0;
	l->regions = calloc(l->info.nregions ? l->info.nregions : 1, sizeof(*l->regions));
	if (!l->regions) return dl_fail(ENOMEM, "no memory");
	if (l->info.vectors) {
		l->vectors = malloc(sizeof(int) * l->info.vectors);
		if (!l->vectors) return dl_fail(ENOMEM, "no memory");
		for (unsigned v = 0; v < l->info.vectors; v++) {
			int e = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
			if (e < 0) return dl_fail(errno, "eventfd: %s", strerror(errno));
			l->vectors[l->nvectors++] = e;
		}
	}
	l->err_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	l->req_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->err_fd < 0 || l->req_fd < 0) return dl_fail(errno, "eventfd: %s", strerror(errno));

	unsigned chunks = (l->nvectors + DL_MAX_FDS - 1) / DL_MAX_FDS;
	unsigned n = chunks + 2 + (l->notice_index > 0) + l->info.nregions;
	/* Payloads, requests and replies for all n: sent DL_MAX_BATCH at a time (one round trip each; a lease of
	 * many regions or vectors takes a few), every reply taken before any is acted on. */
	uint8_t (*irq)[20] = calloc(n, sizeof(*irq));
	uint8_t (*info)[32] = calloc(n, sizeof(*info));
	struct dl_request *q = calloc(n, sizeof(*q));
	struct dl_msg *r = calloc(n, sizeof(*r));
	if (!irq || !info || !q || !r) {
		free(irq);
		free(info);
		free(q);
		free(r);
		return dl_fail(ENOMEM, "no memory");
	}
	unsigned k = 0;
	for (unsigned s = 0; s < l->nvectors; s += DL_MAX_FDS, k++) {
		unsigned c = l->nvectors - s < DL_MAX_FDS ? l->nvectors - s : DL_MAX_FDS;
		irq_set(irq[k], VFIO_PCI_MSIX_IRQ_INDEX, s, c);
		q[k] = (struct dl_request){ VFIO_USER_DEVICE_SET_IRQS, irq[k], 20, l->vectors + s, c, "set irqs" };
	}
	irq_set(irq[k], VFIO_PCI_ERR_IRQ_INDEX, 0, 1);
	q[k] = (struct dl_request){ VFIO_USER_DEVICE_SET_IRQS, irq[k], 20, &l->err_fd, 1, "set irqs (ERR)" };
	k++;
	if (l->notice_index > 0) {
		irq_set(irq[k], (unsigned)l->notice_index, 0, 1);
		q[k] = (struct dl_request){ VFIO_USER_DEVICE_SET_IRQS, irq[k], 20, &l->err_fd, 1, "set irqs (notice)" };
		k++;
	}
	irq_set(irq[k], VFIO_PCI_REQ_IRQ_INDEX, 0, 1);
	q[k] = (struct dl_request){ VFIO_USER_DEVICE_SET_IRQS, irq[k], 20, &l->req_fd, 1, "set irqs (REQ)" };
	k++;
	unsigned first_region = k;
	for (unsigned i = 0; i < l->info.nregions; i++, k++) {
		dl_put32(info[k], 128);
		dl_put32(info[k] + 8, l->info.regions[i].index);
		q[k] = (struct dl_request){ VFIO_USER_DEVICE_GET_REGION_INFO, info[k], 32, NULL, 0, "region info" };
	}
	int rc = 0;
	for (unsigned off = 0; rc == 0 && off < n; off += DL_MAX_BATCH)
		rc = dl_call_batch(l, q + off, n - off < DL_MAX_BATCH ? n - off : DL_MAX_BATCH, r + off);
	/* Every reply is taken here, mapped or released, even after a failure: none may keep its fd. */
	for (unsigned j = 0; j < first_region; j++) dl_msg_release(&r[j]);
	for (unsigned i = 0; i < l->info.nregions; i++) {
		struct dl_msg *m = &r[first_region + i];
		unsigned index = l->info.regions[i].index;
		if (rc < 0) {
			dl_msg_release(m);
			continue;
		}
		if (m->payload_len < 32 || m->nfds > 1) {
			rc = dl_fail(EPROTO, "region %u info: the reply has %zu bytes and %u fds (needs 32 bytes, at most 1 fd)",
				     index, m->payload_len, m->nfds);
			l->broken = -EPROTO;
			dl_msg_release(m);
			continue;
		}
		uint64_t size = dl_get64(m->payload + 16), offset = dl_get64(m->payload + 24);
		uint32_t flags;
		int fd = m->nfds ? m->fds[0] : -1;
		m->nfds = 0;
		bool small = dl_get32(m->payload) > 128;
		dl_msg_release(m);
		if (small) {
			/* Its capabilities did not fit: asked again, alone, with the size the broker named. */
			if (fd >= 0) close(fd);
			rc = region_info(l, index, &size, &flags, &offset, &fd);
			if (rc < 0) continue;
		}
		rc = map_region(l, index, size, offset, fd, &audited);
	}
	free(irq);
	free(info);
	free(q);
	free(r);
	/* After an audited hand-off: DEVICE_GET_INFO, sent after the device fd was closed above, tells the broker's
	 * audit the hand-off is over (docs/AUDITED-SLICES.md); from then on a kept fd is a violation. */
	if (rc == 0 && audited) {
		uint8_t p[16] = { 0 };
		dl_put32(p, sizeof(p));
		struct dl_msg m;
		rc = dl_call(l, VFIO_USER_DEVICE_GET_INFO, p, sizeof(p), NULL, 0, &m, "device info");
		if (rc == 0) dl_msg_release(&m);
	}
	return rc;
}

int devlease_connect(const struct devlease_connect_opts *opts, struct devlease **out)
{
	if (!opts || !opts->socket || !out) return dl_fail(EINVAL, "devlease_connect: opts, opts->socket and out are required");
	*out = NULL;
	struct devlease *l = calloc(1, sizeof(*l));
	if (!l) return dl_fail(ENOMEM, "no memory");
	l->err_fd = l->req_fd = -1;
	l->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 5000;
	snprintf(l->name, sizeof(l->name), "on %.80s", opts->socket);
	l->sock = open_socket(opts->socket, l->timeout_ms);
	if (l->sock < 0) {
		int rc = l->sock;
		free(l);
		return rc;
	}
	int rc = version(l, opts->request_json);
	if (rc == 0) rc = dl_read_info(l);
	if (rc == 0) dl_dma_init(l);
	if (rc == 0) rc = setup(l);
	if (rc < 0) {
		char why[1536];
		snprintf(why, sizeof(why), "%s", devlease_errmsg());
		devlease_free(l); /* whatever setup made goes too */
		return dl_fail(-rc, "%s", why);
	}
	*out = l;
	return 0;
}

void devlease_close(struct devlease *l)
{
	if (!l || l->closed) return;
	l->closed = true;
	for (unsigned i = 0; i < l->nregions; i++) munmap(l->regions[i].addr, l->regions[i].len);
	free(l->regions);
	l->regions = NULL;
	l->nregions = 0;
	for (unsigned i = 0; i < l->nvectors; i++) close(l->vectors[i]);
	free(l->vectors);
	l->vectors = NULL;
	l->nvectors = 0;
	for (unsigned i = 0; i < l->niofds; i++)
		if (l->iofds[i].fd >= 0) close(l->iofds[i].fd);
	free(l->iofds);
	l->iofds = NULL;
	l->niofds = 0;
	if (l->err_fd >= 0) close(l->err_fd);
	if (l->req_fd >= 0) close(l->req_fd);
	l->err_fd = l->req_fd = -1;
	dl_dma_drop_all(l);
	close(l->sock); /* the broker reclaims the lease when the session closes */
	l->sock = -1;
	dl_free_info(l);
}

void devlease_free(struct devlease *l)
{
	if (!l) return;
	devlease_close(l);
	free(l);
}

bool devlease_closed(const struct devlease *l)
{
	return !l || l->closed;
}

const struct devlease_info *devlease_info(const struct devlease *l)
{
	return l && !l->closed ? &l->info : NULL;
}

int devlease_refresh_info(struct devlease *l)
{
	int rc = dl_check_open(l, "refresh info");
	return rc < 0 ? rc : dl_read_info(l);
}

int devlease_region(struct devlease *l, unsigned index, void **addr, size_t *len)
{
	int rc = dl_check_open(l, "region");
	if (rc < 0) return rc;
	for (unsigned i = 0; i < l->nregions; i++) {
		if (l->regions[i].index != index) continue;
		if (addr) *addr = l->regions[i].addr;
		if (len) *len = l->regions[i].len;
		return 0;
	}
	return dl_fail(ENOENT, "lease region %u is not mapped (%u regions mapped)", index, l->nregions);
}

uint64_t devlease_dma_page(const struct devlease *l)
{
	return l ? l->page : 0;
}
