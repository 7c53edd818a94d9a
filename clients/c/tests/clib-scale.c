/* Bench driver: one of the scale case's lease-holding processes, as a C client (libdevlease).
 *   clib-scale SOCKET COUNT
 * Prints "ready", then reads commands on stdin, one a line:
 *   go        lease COUNT times, one after another, holding each; prints each connect's µs as a JSON array
 *   release   close every lease held; prints "released"
 *   exit (or end of input)   close every lease held and exit 0
 * A lease refused or failed ends the process (exit 1) with the library's message on stderr: the case then
 * fails naming it. The leases are those of devlease_connect(): VERSION, the info, the regions mapped, the
 * vector, ERR and REQ eventfds wired — what the TypeScript client's connect() does in the same case. */
#define _GNU_SOURCE
#include <devlease.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void release_all(struct devlease **held, long *n)
{
	for (long i = 0; i < *n; i++) devlease_free(held[i]);
	*n = 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 || atol(argv[2]) <= 0) {
		fprintf(stderr, "usage: clib-scale SOCKET COUNT (COUNT > 0)\n");
		return 2;
	}
	long count = atol(argv[2]);
	struct devlease **held = calloc((size_t)count, sizeof(*held));
	double *us = calloc((size_t)count, sizeof(double));
	if (!held || !us) {
		fprintf(stderr, "clib-scale: out of memory\n");
		return 1;
	}
	long n = 0;
	/* The case's own deadline bounds the burst; each call gets as long as the TypeScript clients' (60 s). */
	struct devlease_connect_opts o = { .socket = argv[1], .timeout_ms = 60000 };
	printf("ready\n");
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof(line), stdin)) {
		if (strcmp(line, "go\n") == 0) {
			if (n != 0) {
				fprintf(stderr, "clib-scale: go while %ld leases are held (release first)\n", n);
				release_all(held, &n);
				return 2;
			}
			for (long i = 0; i < count; i++) {
				double t0 = now_us();
				if (devlease_connect(&o, &held[n]) < 0) {
					fprintf(stderr, "clib-scale: lease %ld of %ld: %s\n", i + 1, count, devlease_errmsg());
					release_all(held, &n);
					return 1;
				}
				n++;
				us[i] = now_us() - t0;
			}
			printf("[");
			for (long i = 0; i < count; i++) printf("%s%.1f", i ? "," : "", us[i]);
			printf("]\n");
		} else if (strcmp(line, "release\n") == 0) {
			release_all(held, &n);
			printf("released\n");
		} else if (strcmp(line, "exit\n") == 0) {
			break;
		} else {
			fprintf(stderr, "clib-scale: unknown command %s", line);
			release_all(held, &n);
			return 2;
		}
		fflush(stdout);
	}
	release_all(held, &n);
	free(held);
	free(us);
	return 0;
}
