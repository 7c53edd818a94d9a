// Handling a revocation notice: the owner asked for the lease back with a
// deadline. Finish what is in flight, then let go before the deadline — a
// client that does not is reclaimed by force, and its mappings read as revoked.
import { connect, Sa1Queue } from 'devlease/client';

const lease = await connect({ socket: process.argv[2] ?? '/run/devlease/sa1/queue.sock', deferSetup: true });
const queue = await Sa1Queue.create(lease);
console.log(`leased ${lease.info.lease}; working until the owner wants it back`);

const notice = new Promise<{ deadline: number }>((resolve) => lease.once('revoke-requested', resolve));
let done = 0;
let stop = false;
void notice.then(({ deadline }) => {
  console.log(`revocation notice: ${deadline - Date.now()} ms to let go`);
  stop = true;
});
while (!stop) {
  await queue.nop();
  done++;
  if (done % 1000 === 0) await new Promise((r) => setImmediate(r));
}
lease.close(); // voluntary release: the broker reclaims now instead of at the deadline
console.log(`released after ${done} operations`);
