// A queue is readied for its next lease when the last holder is reclaimed
// (Driver.prepare), so the grant needs no reset of its own. What the last
// holder wrote to its queue page up to the moment its slice was revoked —
// reclaim revokes first, then quiesces — must not reach the next lease.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { QP } from '../../src/hw/sa1/regs.js';
import { VFIO_DEVICE_FEATURE_DMA_BUF } from '../../src/vfio/uapi/vfio.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('what the last holder wrote to its queue page up to the revoke does not reach the next lease', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    const infoA = (await a.call('connect', { socket: rig.socket })).info;
    // Up to the revoke the holder still has its page: it writes ring registers and a doorbell through a
    // mapping kept past its session, just before the revoke reaches the device.
    const device = rig.broker.device;
    const revokeSlice = device.revokeSlice.bind(device);
    let wrote = false;
    device.revokeSlice = async (fd, opts) => {
      await a.call('keptWrite', { offset: QP.SQ_BASE, value: 0x7000 });
      await a.call('keptWrite', { offset: QP.SQ_SIZE, value: 8 });
      await a.call('keptWrite', { offset: QP.SQ_TAIL, value: 3 });
      wrote = true;
      return revokeSlice(fd, opts);
    };
    await a.call('dropSessionKeepMapping');
    await until('the lease to be released', () => rig.broker.leases.all().length === 0, 10_000);
    device.revokeSlice = revokeSlice;
    assert.ok(wrote, 'the holder wrote to its page just before the revoke');
    await a.call('unmapKept');
    const infoB = (await b.call('connect', { socket: rig.socket })).info;
    assert.equal(infoB.queue, infoA.queue, 'the same queue is leased again');
    for (const reg of [QP.SQ_BASE, QP.SQ_SIZE, QP.SQ_TAIL, QP.SQ_HEAD]) {
      assert.equal(
        await b.call('pageRead', { offset: reg }),
        0,
        `queue page register 0x${reg.toString(16)} is reset`,
      );
    }
  } finally {
    await Promise.all([a.kill(), b.kill()]);
    await rig.close();
  }
});

test("the next grant of a reclaimed queue takes its page's slice fd as prepared: no slice request at grant", async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  const clients: ClientProc[] = [];
  try {
    const a = await ClientProc.spawn();
    clients.push(a);
    const infoA = (await a.call('connect', { socket: rig.socket })).info;
    await a.exit();
    await until('the lease to be released', () => rig.broker.leases.all().length === 0, 10_000);
    // Count the slice-fd requests the broker's device connection sends from here (the grant's would be one).
    const client = (rig.broker.device as VfioUserDevice).client;
    const feature = client.feature.bind(client);
    let asked = 0;
    client.feature = (f, opts) => {
      if (f.feature === VFIO_DEVICE_FEATURE_DMA_BUF) asked++;
      return feature(f, opts);
    };
    const b = await ClientProc.spawn();
    clients.push(b);
    const infoB = (await b.call('connect', { socket: rig.socket })).info;
    assert.equal(infoB.queue, infoA.queue, 'the same queue is leased again');
    assert.equal(asked, 0, 'the grant asked the device for no slice fd');
    await b.call('queue');
    const nop = await b.call('submit', { desc: { opcode: 'NOP' } });
    assert.equal(nop.status, 'OK', 'the page handed out reaches the device: the NOP completes');
  } finally {
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});
