/*
 * A chaos victim on libdevlease (test/chaos): the same lifecycle phases as the Node victim
 * (test/chaos/chaos-client.ts), in a process that starts in a few ms of CPU (a Node one: ~0.3 s), so tens of
 * thousands of SIGKILLs are affordable. It goes through its phase in a loop until killed and says
 * where it is on stdout, one line each:
 *   start                  just before connecting (VERSION and the lease request follow)
 *   working LEASE-ID       the phase's work runs
 *   error CODE MESSAGE     a call failed (a reset, a revoke); the lifecycle starts over
 *   chaos-victim SOCK PHASE SEED [comply]
 *     PHASE connect  connect, negotiate, map a buffer, hold
 *           dma      DMA alloc/free churn (map and unmap, 1..64 pages)
 *           queue    an SA-1 queue running batches of 1..8 COPYs
 *           revoke   hold a mapping; with "comply", let go 0..50 ms after the revocation notice
 */
#define _GNU_SOURCE
#include <devlease_sa1.h>

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng_state;

static uint64_t next(void)
{
	/* xorshift64*: any seed but 0 */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dull;
}

/* Uniform in [lo, hi]. */
static long pick(long lo, long hi)
{
	return lo + (long)(next() % (uint64_t)(hi - lo + 1));
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

static int failed(int rc, const char *what)
{
	say("error %s %s: %s", strerrorname_np(-rc) ? strerrorname_np(-rc) : "E?", what, devlease_errmsg());
	return rc;
}

/* Serve the broker's notices; 1 when the lease is over (disconnected, reset), else 0. */
static int notices(struct devlease *l, bool comply, int64_t *let_go_at)
{
	struct devlease_notice n;
	int rc;
	while ((rc = devlease_next_notice(l, &n)) == 1) {
		if (n.kind == DEVLEASE_NOTICE_REVOKE && comply && *let_go_at < 0)
			*let_go_at = devlease_now_ms() + pick(0, 50);
		if (n.kind == DEVLEASE_NOTICE_DISCONNECTED || n.kind == DEVLEASE_NOTICE_RESET) return 1;
	}
	return rc < 0 ? 1 : 0;
}

/* Without waiting: 1 when a notice says the lease is over (revoked, reset, disconnected). */
static int lease_over(struct devlease *l, int64_t *let_go_at)
{
	struct pollfd p[3] = { { .fd = devlease_revoke_fd(l), .events = POLLIN },
			       { .fd = devlease_error_fd(l), .events = POLLIN },
			       { .fd = devlease_socket_fd(l), .events = POLLIN | POLLRDHUP } };
	if (poll(p, 3, 0) <= 0) return 0;
	if (p[0].revents & POLLIN) return 1; /* revocation notice: let go now */
	return notices(l, false, let_go_at);
}

/*
 * A revocation or a device reset can land between the check above and the next touch of the queue page,
 * which then faults (SIGBUS, as libdevlease documents for revoked slices). The victim turns that fault
 * into an error and starts over, but only once a notice confirms the lease really ended: a fault on a
 * live lease aborts, and the chaos runner counts it as an unexpected exit.
 */
static sigjmp_buf on_fault;
static volatile sig_atomic_t fault_armed;

static void sigbus(int sig)
{
	if (!fault_armed) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	fault_armed = 0;
	siglongjmp(on_fault, 1);
}

/* After a SIGBUS: wait (up to 10 s) for the notice that says the lease ended; abort if none comes. */
static void confirm_ended(struct devlease *l)
{
	int64_t end = devlease_now_ms() + 10000, let_go_at = -1;
	while (devlease_now_ms() < end) {
		struct pollfd p[3] = { { .fd = devlease_revoke_fd(l), .events = POLLIN },
				       { .fd = devlease_error_fd(l), .events = POLLIN },
				       { .fd = devlease_socket_fd(l), .events = POLLIN | POLLRDHUP } };
		if (poll(p, 3, 100) > 0 && ((p[0].revents & POLLIN) || notices(l, false, &let_go_at))) return;
	}
	fprintf(stderr, "chaos-victim: SIGBUS on the queue page of lease %s, which no notice says ended\n",
		devlease_info(l)->lease);
	abort();
}

static int dma_churn(struct devlease *l)
{
	struct devlease_buf held[8] = { 0 };
	unsigned n = 0;
	say("working %s", devlease_info(l)->lease);
	for (;;) {
		if (n > 0 && (n >= 8 || pick(0, 1))) {
			unsigned i = (unsigned)pick(0, n - 1);
			int rc = devlease_dma_free(l, &held[i]);
			held[i] = held[--n];
			if (rc < 0) return failed(rc, "dma free");
		} else {
			int rc = devlease_dma_alloc(l, 4096 * (size_t)pick(1, 64), &held[n]);
			if (rc < 0) return failed(rc, "dma alloc");
			memset(held[n].addr, (int)pick(0, 255), held[n].size);
			n++;
		}
	}
}

static int queue_work(struct devlease *l)
{
	struct devlease_sa1_queue *q;
	struct devlease_sa1_queue_opts o = { .entries = 16 };
	int rc = devlease_sa1_queue_create(l, &o, &q);
	if (rc < 0) return failed(rc, "queue create");
	struct devlease_buf src, dst;
	if ((rc = devlease_dma_alloc(l, 65536, &src)) < 0 || (rc = devlease_dma_alloc(l, 65536, &dst)) < 0) {
		devlease_sa1_queue_free(q);
		return failed(rc, "dma alloc");
	}
	memset(src.addr, 0x5a, src.size);
	say("working %s", devlease_info(l)->lease);
	for (;;) {
		struct devlease_sa1_desc d[8];
		unsigned n = (unsigned)pick(1, 8);
		for (unsigned i = 0; i < n; i++)
			d[i] = (struct devlease_sa1_desc){ .opcode = SA1_OP_COPY,
							   .length = (uint32_t)pick(1, 65536),
							   .src = src.iova,
							   .dst = dst.iova };
		if ((rc = devlease_sa1_run(q, d, n, 10000, NULL)) < 0) {
			devlease_sa1_queue_free(q);
			return failed(rc, "queue run");
		}
		/* libdevlease's contract: on a notice that ends the lease, stop touching the queue page. */
		int64_t let_go_at = -1;
		if (lease_over(l, &let_go_at)) {
			devlease_sa1_queue_free(q);
			return failed(-ECONNRESET, "queue work: the lease ended");
		}
	}
}

static int hold(struct devlease *l, bool comply)
{
	struct devlease_buf b;
	int rc = devlease_dma_alloc(l, 4096 * (size_t)pick(1, 16), &b);
	if (rc < 0) return failed(rc, "dma alloc");
	say("working %s", devlease_info(l)->lease);
	int64_t let_go_at = -1;
	struct pollfd p[2] = { { .fd = devlease_revoke_fd(l), .events = POLLIN },
			       { .fd = devlease_socket_fd(l), .events = POLLIN | POLLRDHUP } };
	for (;;) {
		int wait = 1000;
		if (let_go_at >= 0) {
			int64_t left = let_go_at - devlease_now_ms();
			if (left <= 0) return 0; /* complied: the lease closes, the broker reclaims at once */
			wait = (int)left;
		}
		if (poll(p, 2, wait) > 0 && notices(l, comply, &let_go_at)) return failed(-ECONNRESET, "held lease");
	}
}

static int lifecycle(const char *sock, const char *phase, bool comply)
{
	say("start");
	struct devlease *l;
	struct devlease_connect_opts o = { .socket = sock, .timeout_ms = 20000 };
	int rc = devlease_connect(&o, &l);
	if (rc < 0) return failed(rc, "connect");
	if (!strcmp(phase, "dma")) rc = dma_churn(l);
	else if (!strcmp(phase, "queue")) {
		if (sigsetjmp(on_fault, 1)) {
			/* the queue's rings stay allocated: the handle is lost with the jump, and the process is
			 * killed within seconds; the lease's close below unmaps what the broker cares about */
			confirm_ended(l);
			rc = failed(-EFAULT, "queue page faulted after the lease ended");
		} else {
			fault_armed = 1;
			rc = queue_work(l);
		}
		fault_armed = 0;
	}
	else rc = hold(l, comply); /* connect, revoke */
	devlease_free(l);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: chaos-victim SOCK connect|dma|queue|revoke SEED [comply]\n");
		return 2;
	}
	const char *phase = argv[2];
	if (strcmp(phase, "connect") && strcmp(phase, "dma") && strcmp(phase, "queue") && strcmp(phase, "revoke")) {
		fprintf(stderr, "chaos-victim: unknown phase '%s'\n", phase);
		return 2;
	}
	rng_state = strtoull(argv[3], NULL, 10) * 2654435761u + 1;
	bool comply = argc > 4 && !strcmp(argv[4], "comply");
	struct sigaction sa = { .sa_handler = sigbus };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	for (;;) {
		if (lifecycle(argv[1], phase, comply) < 0) sleep_ms(pick(5, 50));
	}
}
