/* Bench driver: NOP doorbell -> completion from the C client (this client spinning).
 *   clib-bench SOCKET N WARMUP BUDGET_MS [IDLE_MS]   prints the N samples (µs) as one JSON array
 * IDLE_MS: sleep that long before each NOP (the first op after idle: the device asleep, kicked). */
#define _GNU_SOURCE
#include <devlease_sa1.h>

#include <time.h>

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	if (argc != 5 && argc != 6) {
		fprintf(stderr, "usage: clib-bench SOCKET N WARMUP BUDGET_MS [IDLE_MS]\n");
		return 2;
	}
	long n = atol(argv[2]), warmup = atol(argv[3]);
	long idle_ms = argc == 6 ? atol(argv[5]) : 0;
	struct timespec idle = { idle_ms / 1000, (idle_ms % 1000) * 1000000L };
	double budget_us = atof(argv[4]) * 1000;
	struct devlease *l;
	struct devlease_connect_opts o = { .socket = argv[1], .timeout_ms = 20000 };
	DEVLEASE_MUST(devlease_connect(&o, &l));
	struct devlease_sa1_queue *q;
	struct devlease_sa1_queue_opts qo = { .entries = 256, .spin_us = 1000000 };
	DEVLEASE_MUST(devlease_sa1_queue_create(l, &qo, &q));
	double *samples = calloc((size_t)n, sizeof(double));
	struct devlease_sa1_desc nop = { .opcode = SA1_OP_NOP, .flags = DEVLEASE_SA1_NO_INTR };
	long got = 0;
	double end = now_us() + budget_us;
	/* The budget covers the warm-up too; at least 50 samples whatever the machine's load. */
	for (long i = 0; i < warmup + n && !(got > 50 && now_us() > end); i++) {
		uint64_t tag;
		if (idle_ms > 0) nanosleep(&idle, NULL);
		double t0 = now_us();
		DEVLEASE_MUST(devlease_sa1_submit(q, &nop, 1, &tag));
		DEVLEASE_MUST(devlease_sa1_wait(q, tag, 1000, NULL));
		if (i >= warmup) samples[got++] = now_us() - t0;
	}
	printf("[");
	for (long i = 0; i < got; i++) printf("%s%.3f", i ? "," : "", samples[i]);
	printf("]\n");
	free(samples);
	devlease_sa1_queue_free(q);
	devlease_free(l);
	return 0;
}
