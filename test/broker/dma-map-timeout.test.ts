// A DMA_MAP whose answer times out may still be made by the device: the broker drops the late answer, and no
// mapping of the lease records the map. Reclaim used to unmap only what it had recorded, so such a map stayed
// on the device after the lease ended, in the window the queue's next holder is given (the same device
// IOVAs: it could reach the previous client's memory). Now a lease with a map of unknown outcome is unmapped
// whole at reclaim, and quarantined if even that fails.
import assert from 'node:assert/strict';
import { after, afterEach, beforeEach, test } from 'node:test';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig;
let clients: ClientProc[] = [];
beforeEach(async () => {
  // One queue: the next lease gets the same window. A long heartbeat: the stopped device is not taken for
  // hung while this test holds it.
  rig = await startRig({
    sim: { numQueues: 1 },
    deviceTimeoutMs: 400,
    config: { sa1: { heartbeat_ms: 60_000 } },
  });
});
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
  await rig.close();
});

// With fewer than two maps recorded the lease's maps are unmapped one by one, the late one too; with more, one
// DMA_UNMAP of the whole window takes them all, the late one with them (it is not sent an unmap of its own).
for (const recorded of [0, 2]) {
  test(`a DMA_MAP answered too late is unmapped when its lease ends: nothing of it stays on the device (${recorded ? 'whole window' : 'map by map'})`, async () => {
    const deviceMaps = async () => (await rig.sim.stats()).dmaMaps;
    const idle = await deviceMaps();
    const a = await ClientProc.spawn();
    clients.push(a);
    const info = (await a.call('connect', { socket: rig.socket })).info;
    const base = BigInt(info.iovaWindow.base);
    for (let i = 0n; i < BigInt(recorded); i++)
      await a.call('rawMap', { iova: `0x${(base + 0x200000n + i * 0x1000n).toString(16)}`, size: '0x1000' });
    const known = await deviceMaps();
    const lease = rig.broker.leases.get(info.lease)!;
    assert.equal(known - idle, lease.mappings.size, 'the device holds what the broker recorded');
    assert.equal(lease.mappings.size, recorded);
    // The device stops (SIGSTOP) with the map sent: its answer misses the broker's deadline.
    const iova = base + 0x100000n;
    rig.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
    try {
      await assert.rejects(a.call('rawMap', { iova: `0x${iova.toString(16)}`, size: '0x1000' }), /ETIMEDOUT/);
    } finally {
      rig.sim.process.kill('SIGCONT');
    }
    await until(
      'the device to make the map after all',
      async () => (await deviceMaps()) === known + 1,
      10_000,
    );
    assert.equal(lease.mappings.size, known - idle, 'the broker did not record it');
    assert.equal(lease.maybeMaps.length, 1);
    const late = { iova: lease.maybeMaps[0]!.deviceIova, size: lease.maybeMaps[0]!.size };
    // The unmaps the device is sent from here (the lease's end).
    const unmaps: { iova: bigint; size: bigint }[] = [];
    const device = rig.broker.device;
    const dmaUnmap = device.dmaUnmap.bind(device);
    device.dmaUnmap = (at, size) => {
      unmaps.push({ iova: at, size });
      return dmaUnmap(at, size);
    };
    await a.exit();
    await until('the lease to end', () => rig.broker.leases.all().length === 0, 10_000);
    assert.equal(lease.state, 'released', `released, not quarantined (${lease.quarantineReason ?? ''})`);
    assert.equal(
      await deviceMaps(),
      idle,
      'every map of the lease is gone from the device, the late one too',
    );
    const w = lease.resources.window!;
    if (recorded)
      assert.deepEqual(unmaps, [{ iova: w.base, size: w.size }], 'the late map went with the window');
    else assert.deepEqual(unmaps, [late], 'the late map is unmapped as it was asked for');
    // The queue's next holder maps at the same IOVA: nothing is there.
    const b = await ClientProc.spawn();
    clients.push(b);
    const infoB = (await b.call('connect', { socket: rig.socket })).info;
    assert.equal(infoB.queue, info.queue);
    await b.call('rawMap', { iova: `0x${iova.toString(16)}`, size: '0x1000' });
  });
}
