// A device with more queues than one message can carry fds for (SA-1 with
// over 253 queues: its REGION_IO_FDS answer is ENOSPC) still leases: the
// queue helper goes without a kick fd and the device's idle poll serves it,
// as in datasheet rev 1. (The scale bench, 1,024 queues, failed on this.)
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
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

test('with 300 queues a lease gets no kick fd, and its queue still completes work', {
  timeout: 60_000,
}, async () => {
  assert.equal(await lease.ioEventFd(2, 0x0c), null, 'no kick fd: the device cannot send 300 in one message');
  const q = await Sa1Queue.create(lease);
  const src = await lease.dma.alloc(4096);
  const dst = await lease.dma.alloc(4096);
  src.u8.fill(0xa5);
  await q.copy(src.iova, dst.iova, 4096);
  assert.ok(dst.u8.every((b) => b === 0xa5));
  await q.close();
  await src.free();
  await dst.free();
});
