import { connect, Sa1Queue } from 'devlease/client';

// Lease a queue from the broker's socket for the `queue` lease kind.
await using lease = await connect({
  socket: process.argv[2] ?? '/run/devlease/sa1/queue.sock',
  deferSetup: true, // the queue's requests below go out with the lease's setup: one round trip
});
const queue = await Sa1Queue.create(lease);
const src = await lease.dma.alloc(4096); // memfd-backed, mapped in our IOVA window
const dst = await lease.dma.alloc(4096);
src.u8.fill(0x5a);
await queue.copy(src.iova, dst.iova, 4096); // doorbell straight into our queue page
console.log(
  `lease ${lease.info.lease} on queue ${lease.info.queue}: copied`,
  dst.u8.every((b) => b === 0x5a),
);
