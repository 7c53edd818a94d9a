/*
 * The vfio-user wire (AF_UNIX SOCK_STREAM, docs/PROTOCOL.md): one message is
 * read exactly (its 16-byte header, then the rest), so fds received belong to
 * the message being read; fds must come with the first bytes. Every read and
 * write has the call's deadline (l->deadline), set once per call: a call's
 * waits together, the commands it serves meanwhile included, end by then, so
 * a broker that trickles a message or streams commands cannot hold the caller
 * past timeout_ms. Anything malformed (short, oversized, fds
 * where none may be, more fds than DL_MAX_FDS, a reply to an id we did not
 * send) is a protocol error that ends the session: the broker is not trusted
 * to be well-formed. Fds this process could not take (its fd table full) are
 * not the broker's fault: that message's call fails, the session goes on.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void close_fds(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (fds[i] >= 0) close(fds[i]);
}

void dl_msg_release(struct dl_msg *m)
{
	free(m->payload);
	m->payload = NULL;
	close_fds(m->fds, m->nfds);
	m->nfds = 0;
}

/* The session is unusable from now on: every later call gets `err`. */
static int broken(struct devlease *l, int err, const char *fmt, const char *detail)
{
	if (!l->broken) l->broken = -err;
	return dl_fail(err, fmt, detail);
}

/* Wait for the session socket until the call's deadline. */
static int wait_sock(struct devlease *l, short events)
{
	for (;;) {
		int64_t left = l->deadline - dl_mono_ms();
		if (left <= 0) return -ETIMEDOUT;
		struct pollfd p = { .fd = l->sock, .events = events };
		int n = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
		if (n > 0) return 0;
		if (n < 0 && errno != EINTR) return -errno;
	}
}

static int send_msg(struct devlease *l, const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
	size_t done = 0;
	while (done < len) {
		struct iovec iov = { .iov_base = (void *)(buf + done), .iov_len = len - done };
		union {
			char b[CMSG_SPACE(sizeof(int) * DL_MAX_FDS)];
			struct cmsghdr align;
		} ctl;
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (done == 0 && nfds) { /* the fds go with the first bytes, once */
			memset(&ctl, 0, sizeof(ctl));
			mh.msg_control = ctl.b;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
		}
		ssize_t n = sendmsg(l->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int rc = wait_sock(l, POLLOUT);
			if (rc == -ETIMEDOUT) return broken(l, ETIMEDOUT, "%s", "the broker took no data before the deadline");
			if (rc < 0) return broken(l, -rc, "%s", "waiting to send");
			continue;
		}
		return broken(l, errno == EPIPE ? ECONNRESET : errno, "%s",
			      "sending to the broker failed (the session is gone)");
	}
	return 0;
}

/* The fds a read's control buffer holds, as the kernel counts them (scm_detach_fds): DL_MAX_FDS, no more (the
 * collecting loop below keeps that many). */
#define CTL_FDS ((CMSG_SPACE(sizeof(int) * DL_MAX_FDS) - CMSG_LEN(0)) / sizeof(int))
_Static_assert(CTL_FDS == DL_MAX_FDS, "the control buffer must hold exactly DL_MAX_FDS fds");

/*
 * Why a read's fds came cut short (MSG_CTRUNC) though the buffer had room for more. The kernel sets MSG_CTRUNC
 * both for more fds than the buffer holds and for fds it could not install here: scm_detach_fds (net/core/scm.c)
 * installs them in order, stops at the first that fails - EMFILE past RLIMIT_NOFILE, or a security module's
 * security_file_receive - and drops the rest. Probed with one dup while those that came are still open, i.e.
 * with the table as the kernel found it (as native/unix_socket.cc's InstallFailure does).
 */
static int install_failure(int sock)
{
	int probe = fcntl(sock, F_DUPFD_CLOEXEC, 0);
	if (probe < 0) return errno; /* EMFILE: the table is full; ENOMEM: it could not grow */
	close(probe);
	return EACCES; /* room for one more: not the table, a security module */
}

/*
 * Read exactly len bytes; fds only allowed (and taken) with the first read when fds != NULL. Fds the kernel
 * could not install set *lost (install_failure) instead: those that came are closed and the bytes are read on,
 * so the stream stays framed.
 */
static int recv_exact(struct devlease *l, uint8_t *buf, size_t len, int *fds, unsigned *nfds, int *lost)
{
	size_t done = 0;
	while (done < len) {
		struct iovec iov = { .iov_base = buf + done, .iov_len = len - done };
		union {
			char b[CMSG_SPACE(sizeof(int) * DL_MAX_FDS)];
			struct cmsghdr align;
		} ctl;
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
				     .msg_controllen = sizeof(ctl.b) };
		ssize_t n = recvmsg(l->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int rc = wait_sock(l, POLLIN);
			if (rc == -ETIMEDOUT)
				return done ? broken(l, EPROTO, "%s", "the broker sent a truncated message (no rest before the deadline)")
					    : -ETIMEDOUT;
			if (rc < 0) return broken(l, -rc, "%s", "waiting for the broker");
			continue;
		}
		if (n < 0) return broken(l, errno, "%s", "reading from the broker failed");
		/* Take every fd that came, so none leaks, before judging whether it may come. */
		unsigned got = 0;
		int extra[DL_MAX_FDS];
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
			unsigned k = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (unsigned i = 0; i < k && got < DL_MAX_FDS; i++)
				memcpy(&extra[got++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
		}
		bool cut = mh.msg_flags & MSG_CTRUNC;
		if (cut && got >= CTL_FDS) { /* the buffer filled: the broker sent more than DL_MAX_FDS */
			close_fds(extra, got);
			return broken(l, EPROTO, "%s", "the broker sent more fds than a message may carry");
		}
		if ((got || cut) && (done || !fds)) {
			close_fds(extra, got);
			return broken(l, EPROTO, "%s", "the broker sent fds after a message's first bytes");
		}
		if (cut) {
			/* Fewer than the buffer holds, cut: an install failed here. Those that came are no use without
			 * the rest, and each holds a slot of a full table. */
			*lost = install_failure(l->sock);
			close_fds(extra, got);
			got = 0;
		}
		if (got) {
			memcpy(fds, extra, sizeof(int) * got);
			*nfds = got;
		}
		if (n == 0)
			return done ? broken(l, EPROTO, "%s", "the broker sent a truncated message and hung up")
				    : broken(l, ECONNRESET, "%s", "the broker closed the session");
		done += (size_t)n;
	}
	return 0;
}

/* Read one whole message. -ETIMEDOUT (session intact) when none started before the deadline. */
static int recv_msg(struct devlease *l, struct dl_msg *m)
{
	uint8_t h[VFIO_USER_HEADER_SIZE];
	memset(m, 0, sizeof(*m));
	int rc = recv_exact(l, h, sizeof(h), m->fds, &m->nfds, &m->fds_lost);
	if (rc < 0) {
		dl_msg_release(m); /* fds that came with the header's first bytes before it was cut short */
		return rc;
	}
	uint16_t id, cmd;
	memcpy(&id, h, 2);
	memcpy(&cmd, h + 2, 2);
	uint32_t size = dl_get32(h + 4);
	m->id = id;
	m->cmd = cmd;
	m->flags = dl_get32(h + 8);
	m->error_no = dl_get32(h + 12);
	if (size < VFIO_USER_HEADER_SIZE || size > DL_MAX_MSG) {
		dl_msg_release(m);
		char d[64];
		snprintf(d, sizeof(d), "%u", size);
		return broken(l, EPROTO, "the broker sent a message of msg_size %s (outside 16..131088)", d);
	}
	m->payload_len = size - VFIO_USER_HEADER_SIZE;
	m->payload = malloc(m->payload_len ? m->payload_len : 1);
	if (!m->payload) {
		dl_msg_release(m);
		return broken(l, ENOMEM, "%s", "no memory for a message");
	}
	/* The call's deadline, not a fresh one: a message begun late is still read by the call's end. */
	rc = recv_exact(l, m->payload, m->payload_len, NULL, NULL, NULL);
	if (rc < 0) dl_msg_release(m);
	return rc;
}

static int send_reply(struct devlease *l, const struct dl_msg *cmd, uint32_t err, const uint8_t *data, size_t len)
{
	if (cmd->flags & VFIO_USER_F_NO_REPLY) return 0;
	uint8_t *buf = malloc(VFIO_USER_HEADER_SIZE + len);
	if (!buf) return dl_fail(ENOMEM, "no memory for a reply");
	memcpy(buf, &cmd->id, 2);
	memcpy(buf + 2, &cmd->cmd, 2);
	dl_put32(buf + 4, (uint32_t)(VFIO_USER_HEADER_SIZE + len));
	dl_put32(buf + 8, VFIO_USER_F_TYPE_REPLY | (err ? VFIO_USER_F_ERROR : 0));
	dl_put32(buf + 12, err);
	if (len) memcpy(buf + VFIO_USER_HEADER_SIZE, data, len);
	int rc = send_msg(l, buf, VFIO_USER_HEADER_SIZE + len, NULL, 0);
	free(buf);
	return rc;
}

/* A command from the broker: DMA_READ/DMA_WRITE served from our fd-backed maps; anything else refused. */
static int serve(struct devlease *l, struct dl_msg *m)
{
	close_fds(m->fds, m->nfds); /* no server command we serve takes fds */
	uint32_t had_fds = m->nfds || m->fds_lost; /* refused as one with fds, whether they arrived or not */
	m->nfds = 0;
	if (m->cmd != VFIO_USER_DMA_READ && m->cmd != VFIO_USER_DMA_WRITE) return send_reply(l, m, ENOTSUP, NULL, 0);
	if (had_fds || m->payload_len < 16) return send_reply(l, m, EINVAL, NULL, 0);
	uint64_t addr = dl_get64(m->payload), count = dl_get64(m->payload + 8);
	if (count == 0 || count > DL_MAX_XFER) return send_reply(l, m, EINVAL, NULL, 0);
	bool write = m->cmd == VFIO_USER_DMA_WRITE;
	if (write ? m->payload_len != 16 + count : m->payload_len != 16) return send_reply(l, m, EINVAL, NULL, 0);
	const struct dl_dma_map *map = dl_dma_find(l, addr, count);
	if (!map) return send_reply(l, m, EFAULT, NULL, 0);
	if (!(map->flags & (write ? DEVLEASE_DMA_WRITE : DEVLEASE_DMA_READ))) return send_reply(l, m, EPERM, NULL, 0);
	off_t at = (off_t)(map->offset + (addr - map->iova));
	if (write) {
		ssize_t n = pwrite(map->fd, m->payload + 16, count, at);
		if (n != (ssize_t)count) return send_reply(l, m, n < 0 ? EIO : EFAULT, NULL, 0);
		return send_reply(l, m, 0, m->payload, 16);
	}
	uint8_t *out = malloc(16 + count);
	if (!out) return send_reply(l, m, ENOMEM, NULL, 0);
	memcpy(out, m->payload, 16);
	ssize_t n = pread(map->fd, out + 16, count, at);
	int rc = n == (ssize_t)count ? send_reply(l, m, 0, out, 16 + count) : send_reply(l, m, n < 0 ? EIO : EFAULT, NULL, 0);
	free(out);
	return rc;
}

static int handle_unsolicited(struct devlease *l, struct dl_msg *m)
{
	if ((m->flags & VFIO_USER_F_TYPE_MASK) == VFIO_USER_F_TYPE_REPLY) {
		char d[48];
		snprintf(d, sizeof(d), "%u", m->id);
		dl_msg_release(m);
		return broken(l, EPROTO, "the broker sent a reply to message id %s, which is not waiting", d);
	}
	int rc = serve(l, m);
	dl_msg_release(m);
	return rc;
}

/*
 * Serve what the broker has sent, without waiting for more: at most DL_MAX_SERVED commands (a broker streaming
 * them kept devlease_next_notice here for good; the socket stays readable, so the caller's epoll calls again).
 * A message begun is read whole, within timeout_ms.
 */
int dl_serve_pending(struct devlease *l)
{
	l->deadline = dl_mono_ms() + l->timeout_ms;
	for (unsigned served = 0; served < DL_MAX_SERVED; served++) {
		if (l->broken) return dl_fail(-l->broken, "the session with the broker is broken");
		struct pollfd p = { .fd = l->sock, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0) return 0;
		struct dl_msg m;
		int rc = recv_msg(l, &m);
		if (rc < 0) return rc;
		rc = handle_unsolicited(l, &m);
		if (rc < 0) return rc;
	}
	return 0;
}

/* Text of an error reply's payload, when it is a reason (printable UTF-8, as the broker sends). */
static void reason_of(const struct dl_msg *m, char *out, size_t cap)
{
	out[0] = 0;
	size_t n = m->payload_len < cap - 1 ? m->payload_len : cap - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = m->payload[i];
		if (c == 0) { n = i; break; }
		if (c < 0x20 && c != '\t' && c != '\n') return;
	}
	memcpy(out, m->payload, n);
	out[n] = 0;
}

/* The failure of a call whose reply's fds could not be received (recv_exact's *lost), naming why. */
static int fds_lost_fail(int err, const char *what)
{
	if (err == EACCES)
		return dl_fail(err, "%s: the broker's reply carried fds a security module refused to this process (pid %d); "
				    "the session goes on", what, (int)getpid());
	if (err != EMFILE)
		return dl_fail(err, "%s: the broker's reply carried fds this process (pid %d) could not take (%s); the "
				    "session goes on", what, (int)getpid(), strerror(err));
	struct rlimit r;
	char limit[32] = "unknown";
	if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
		if (r.rlim_cur == RLIM_INFINITY) snprintf(limit, sizeof(limit), "unlimited");
		else snprintf(limit, sizeof(limit), "%llu", (unsigned long long)r.rlim_cur);
	}
	return dl_fail(EMFILE, "%s: the broker's reply carried fds this process (pid %d) could not take: its fd table "
			       "is full (RLIMIT_NOFILE %s); the session goes on", what, (int)getpid(), limit);
}

/* Sends one request (the caller set the deadline): its message id in *id. */
static int send_request(struct devlease *l, const struct dl_request *q, uint16_t *id)
{
	if (q->len + VFIO_USER_HEADER_SIZE > DL_MAX_MSG)
		return dl_fail(EINVAL, "%s: %zu bytes is too large a message", q->what, q->len);
	*id = l->next_id++;
	uint8_t *buf = malloc(VFIO_USER_HEADER_SIZE + q->len);
	if (!buf) return dl_fail(ENOMEM, "%s: no memory", q->what);
	memcpy(buf, id, 2);
	memcpy(buf + 2, &q->cmd, 2);
	dl_put32(buf + 4, (uint32_t)(VFIO_USER_HEADER_SIZE + q->len));
	dl_put32(buf + 8, 0);
	dl_put32(buf + 12, 0);
	if (q->len) memcpy(buf + VFIO_USER_HEADER_SIZE, q->payload, q->len);
	int rc = send_msg(l, buf, VFIO_USER_HEADER_SIZE + q->len, q->fds, q->nfds);
	free(buf);
	if (rc < 0) return dl_fail(-rc, "%s: %s", q->what, devlease_errmsg());
	return 0;
}

/*
 * The next reply to one of the requests ids[0..n) whose reply has not come (got[i] false): its index, the
 * message in *m. Commands from the broker are served meanwhile; a reply to any other id is a protocol error.
 */
static int next_reply(struct devlease *l, const uint16_t *ids, const bool *got, unsigned n, struct dl_msg *m,
		      const char *what)
{
	for (unsigned served = 0;; served++) {
		/* Past the deadline no message is read, even one already there: commands streamed without end
		 * (each read at once, no wait to time out) kept the call, and devlease_connect, here for good. */
		int rc = dl_mono_ms() >= l->deadline ? -ETIMEDOUT : recv_msg(l, m);
		if (rc == -ETIMEDOUT) {
			/* A late reply would answer a call nobody waits for: the session cannot be trusted. */
			l->broken = -ETIMEDOUT;
			if (served)
				return dl_fail(ETIMEDOUT, "%s: no reply from the broker in %d ms (it sent %u commands meanwhile)",
					       what, l->timeout_ms, served);
			return dl_fail(ETIMEDOUT, "%s: no reply from the broker in %d ms", what, l->timeout_ms);
		}
		if (rc < 0) return dl_fail(-rc, "%s: %s", what, devlease_errmsg());
		if ((m->flags & VFIO_USER_F_TYPE_MASK) == VFIO_USER_F_TYPE_REPLY)
			for (unsigned i = 0; i < n; i++)
				if (!got[i] && ids[i] == m->id) return (int)i;
		rc = handle_unsolicited(l, m); /* a command; a reply to an id not waiting breaks the session */
		if (rc < 0) return dl_fail(-rc, "%s: %s", what, devlease_errmsg());
	}
}

/* A reply `m` to request `q`: 0 with *reply = m, or the request's failure (m released). */
static int take_reply(struct devlease *l, struct dl_msg *m, const struct dl_request *q, struct dl_msg *reply)
{
	if (m->cmd != q->cmd) {
		uint16_t got = m->cmd;
		dl_msg_release(m);
		l->broken = -EPROTO;
		return dl_fail(EPROTO, "%s: the broker's reply names command %u, not %u", q->what, got, q->cmd);
	}
	if (m->flags & VFIO_USER_F_ERROR) {
		int err = m->error_no > 0 && m->error_no < 4096 ? (int)m->error_no : EPROTO;
		char why[1025];
		if (l->reasons || q->cmd == VFIO_USER_VERSION) reason_of(m, why, sizeof(why));
		else why[0] = 0;
		dl_msg_release(m);
		return dl_fail(err, "%s: %s%s%s", q->what, strerror(err), why[0] ? ": " : "", why);
	}
	if (m->fds_lost) {
		/* The reply came whole, without its fds: this request fails, the session goes on. */
		int lost = m->fds_lost;
		dl_msg_release(m);
		return fds_lost_fail(lost, q->what);
	}
	*reply = *m;
	return 0;
}

int dl_call_batch(struct devlease *l, const struct dl_request *reqs, unsigned n, struct dl_msg *replies)
{
	for (unsigned i = 0; i < n; i++) memset(&replies[i], 0, sizeof(replies[i]));
	if (n == 0) return 0;
	if (l->broken) return dl_fail(-l->broken, "%s: the session with the broker is broken", reqs[0].what);
	if (n > DL_MAX_BATCH) return dl_fail(EINVAL, "%s: %u requests in one batch (at most %d)", reqs[0].what, n, DL_MAX_BATCH);
	uint16_t ids[DL_MAX_BATCH];
	bool got[DL_MAX_BATCH] = { false };
	l->deadline = dl_mono_ms() + l->timeout_ms;
	/* Every request first: the broker serves them in order, and this process waits for one round trip. A send
	 * that fails after others went marks the session broken: their replies would answer ids nobody waits for. */
	for (unsigned i = 0; i < n; i++) {
		int rc = send_request(l, &reqs[i], &ids[i]);
		if (rc < 0) {
			if (i) l->broken = rc;
			return rc;
		}
	}
	for (unsigned k = 0; k < n; k++) {
		struct dl_msg m;
		/* A failure before a reply comes (the deadline, a hang-up) names the first request still unanswered. */
		unsigned due = 0;
		while (got[due]) due++;
		int i = next_reply(l, ids, got, n, &m, reqs[due].what);
		int rc = i < 0 ? i : take_reply(l, &m, &reqs[i], &replies[i]);
		if (i >= 0) got[i] = true;
		if (rc < 0) {
			/* The first failure ends the batch: what came is let go; replies still due would answer ids
			 * nobody waits for, so the session is broken unless this was the last. */
			for (unsigned j = 0; j < n; j++) dl_msg_release(&replies[j]);
			if (k + 1 < n && !l->broken) l->broken = rc;
			return rc;
		}
	}
	return 0;
}

int dl_call(struct devlease *l, uint16_t cmd, const void *payload, size_t len, const int *fds, unsigned nfds,
	    struct dl_msg *reply, const char *what)
{
	struct dl_request q = { .cmd = cmd, .payload = payload, .len = len, .fds = fds, .nfds = nfds, .what = what };
	return dl_call_batch(l, &q, 1, reply);
}
