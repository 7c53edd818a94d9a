// Waiting on interrupts: the device signals our own eventfd (the broker only
// wired it), so a sleeping client wakes without any broker round trip.
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, Sa1Queue } from 'devlease/client';

await using lease = await connect({
  socket: process.argv[2] ?? '/run/devlease/sa1/queue.sock',
  deferSetup: true,
});
const queue = await Sa1Queue.create(lease, { spinUs: 0 }); // never spin: always sleep on the interrupt

let interrupts = 0;
lease.on('interrupt', () => interrupts++);

const buf = await lease.dma.alloc(4096);
for (let i = 0; i < 10; i++) {
  // `intr: true` asks the device for an interrupt when this descriptor completes.
  await queue.writeImm(buf.iova, BigInt(i), { intr: true });
}
// The device coalesces: while the next descriptor is already waiting it holds the interrupt back, so on a
// busy machine one signal for all ten can land just after the last completion was collected.
if (interrupts === 0) {
  const deadline = sleep(5000, 'none', { ref: false });
  if ((await Promise.race([lease.nextInterrupt(), deadline])) === 'none') {
    console.log('no interrupt within 5 s of the last completion');
    process.exit(1);
  }
}
console.log(`10 completions, ${interrupts} interrupts (coalesced per batch)`);

// The same interrupts as an async iterator:
const next = lease.interrupts()[Symbol.asyncIterator]().next();
const nop = queue.nop();
console.log(`vector ${(await next).value} fired`);
// The interrupt can come before the queue has collected the completion: wait for it before the lease
// closes, or closing fails the NOP (ERR_DEVLEASE_CLOSED) with nobody awaiting it.
await nop;
