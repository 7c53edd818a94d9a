// Sa1Queue puts both rings in one DMA buffer: one DMA_MAP through the broker
// (which relays it to the device) per queue, so a queue costs one mapping of
// the lease's max_mappings and its creation one device round trip for the
// rings, not two.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a queue takes one DMA mapping: it runs under max_mappings = 1, and a second buffer is refused', async () => {
  const uid = process.getuid!();
  const rig = await startRig({ config: { policy: { rule: [{ uid, max_mappings: 1 }] } } });
  const a = await ClientProc.spawn();
  try {
    await a.call('connect', { socket: rig.socket });
    await a.call('queue', { entries: 64 });
    assert.equal((await a.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
    const lease = rig.broker.leases.all()[0]!;
    assert.equal(rig.broker.leases.usage(lease.ctx).mappings, 1, 'the broker counts one mapping');
    const err = await a.call('alloc', { name: 'more', size: 4096 }).catch((e) => e);
    assert.equal(err.code, 'EACCES', 'the one mapping allowed is the rings');
  } finally {
    await a.exit();
    await rig.close();
  }
});
