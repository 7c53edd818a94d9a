/* The C twin of examples/minimal-copy.ts: lease a queue, COPY one page, check it.
 *   make -C clients/c && clients/c/build/bin/minimal-copy /run/devlease/sa1/queue.sock */
#include <devlease_sa1.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	struct devlease *lease;
	struct devlease_connect_opts opts = { .socket = argc > 1 ? argv[1] : "/run/devlease/sa1/queue.sock" };
	DEVLEASE_MUST(devlease_connect(&opts, &lease));
	struct devlease_sa1_queue *queue;
	DEVLEASE_MUST(devlease_sa1_queue_create(lease, NULL, &queue));
	struct devlease_buf src, dst; /* memfd-backed, mapped in our IOVA window */
	DEVLEASE_MUST(devlease_dma_alloc(lease, 4096, &src));
	DEVLEASE_MUST(devlease_dma_alloc(lease, 4096, &dst));
	memset(src.addr, 0x5a, 4096);
	struct devlease_sa1_desc copy = { .opcode = SA1_OP_COPY, .src = src.iova, .dst = dst.iova, .length = 4096 };
	DEVLEASE_MUST(devlease_sa1_run(queue, &copy, 1, 5000, NULL)); /* doorbell straight into our queue page */
	const unsigned char *d = dst.addr;
	int same = 1;
	for (int i = 0; i < 4096; i++) same &= d[i] == 0x5a;
	const struct devlease_info *info = devlease_info(lease);
	printf("lease %s on queue %d: copied %s\n", info->lease, info->queue, same ? "true" : "false");
	devlease_sa1_queue_free(queue);
	devlease_free(lease); /* releases everything: the broker reclaims the lease */
	return same ? 0 : 1;
}
