// A well-behaved client's proof that a broker still serves new clients: a fresh lease, a queue on it, one
// 4 KiB COPY whose bytes arrive. The long-lived clients of a chaos, fuzz or fail-nth run cannot show that (a
// broker that stopped admitting new connections serves the old ones on). Files that install the fail-nth hook
// import this after it, dynamically, as they import the client (it loads the native addon).
import { connect } from '../../src/client/lease.js';
import { Sa1Queue } from '../../src/client/sa1-queue.js';

/** Leases on `socket`, copies a page filled with `byte` through its queue, and closes the lease; throws naming what failed. */
export async function leaseAndCopy(
  socket: string,
  opts: { timeoutMs?: number; byte?: number } = {},
): Promise<void> {
  const byte = opts.byte ?? 0x5a;
  const lease = await connect({
    socket,
    request: {},
    ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
  });
  try {
    const q = await Sa1Queue.create(lease, { entries: 4 });
    const src = await lease.dma.alloc(4096);
    const dst = await lease.dma.alloc(4096);
    src.u8.fill(byte);
    const done = await q.copy(src.iova, dst.iova, 4096);
    if (done.status !== 'OK') throw new Error(`COPY of a fresh lease ended ${done.status}`);
    if (dst.u8.some((b) => b !== byte))
      throw new Error('COPY of a fresh lease ended OK without the bytes arriving');
  } finally {
    lease.close();
  }
}
