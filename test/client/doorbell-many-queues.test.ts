// A device with more queues than one message can carry fds for (SA-1 with over 253 queues) shares its kick
// fds among them (queue q on fd q mod 253), so every lease still gets its queue's kick fd and the device sleeps
// until kicked. (The scale bench, 1,024 queues, first failed on such a device; then, refused with ENOSPC, its
// leases went without kick fds and the device polled every 50 µs: a fifth of a core for one idle lease.)
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type Lease, Sa1Queue } from '../../src/index.js';
import { type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
let lease: Lease;
before(async () => {
  rig = await startRig({ sim: { numQueues: 300, queueStride: 4096 } });
  lease = await connect({ socket: rig.socket });
});
after(async () => {
  lease?.close();
  await rig?.close();
  await leakCheck();
});

test('with 300 queues a lease gets a kick fd, kicks the sleeping device, and its queue completes work', {
  timeout: 60_000,
}, async () => {
  const kick = await lease.ioEventFd(2, 0x0c);
  assert.ok(kick, 'a kick fd for the queue page');
  assert.equal(readlinkSync(`/proc/self/fd/${kick.fd}`), 'anon_inode:[eventfd]');
  const q = await Sa1Queue.create(lease);
  const src = await lease.dma.alloc(4096);
  const dst = await lease.dma.alloc(4096);
  src.u8.fill(0xa5);
  // Each COPY after a pause longer than the armed poll (10 ms) finds the device asleep on its kick fds: the
  // armed poll finding a doorbell (armedPollFinds) would mean a kick that did not wake it.
  const s0 = await rig.sim.stats();
  for (let i = 0; i < 5; i++) {
    await sleep(15);
    await q.copy(src.iova, dst.iova, 4096);
  }
  assert.ok(dst.u8.every((b) => b === 0xa5));
  const s1 = await rig.sim.stats();
  assert.ok(s1.armedSleeps > s0.armedSleeps, 'the device slept armed: its kick fds were handed out');
  assert.equal(
    s1.armedPollFinds,
    s0.armedPollFinds,
    'every COPY was taken on its kick, none by the armed poll',
  );
  await q.close();
  await src.free();
  await dst.free();
});
