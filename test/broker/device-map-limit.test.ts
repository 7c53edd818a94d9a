// A device advertising fewer DMA maps than the broker's own limits allow (the SA-1 simulator advertises what its
// guard table holds: docs/SA-1.md, "IOMMU"): the broker relays maps as before, and the lease's map past the
// device's max_dma_maps reaches the lease client as the device's ENOSPC, with the lease's table unchanged and room
// again once it unmaps one.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ClientProc, type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
let c: ClientProc;
let base: bigint;
const hex = (v: bigint) => `0x${v.toString(16)}`;
const LIMIT = 4;

before(async () => {
  rig = await startRig({ sim: { maxDmaMaps: LIMIT } });
  c = await ClientProc.spawn();
  const { info } = await c.call<{ info: { iovaWindow: { base: string } } }>('connect', {
    socket: rig.socket,
  });
  base = BigInt(info.iovaWindow.base);
});

after(async () => {
  await c.exit();
  await rig.close();
  await leakCheck();
});

test("a lease's map past the device's max_dma_maps is the device's ENOSPC; an unmap makes room again", async () => {
  assert.equal(rig.device.client.serverCapabilities.maxDmaMaps, LIMIT, 'the broker sees the small limit');
  const held = (await rig.sim.stats()).dmaMaps;
  const iova = (i: number) => hex(base + BigInt(i) * 0x2000n);
  for (let i = 0; i < LIMIT - held; i++) await c.call('rawMap', { iova: iova(i), size: 4096 });
  const err = await c.call('rawMap', { iova: iova(LIMIT), size: 4096 }).catch((e) => e);
  assert.equal(err.code, 'ENOSPC');
  assert.match(err.message, new RegExp(`at most ${LIMIT} maps \\(the max_dma_maps it advertised\\)`));
  const lease = rig.broker.leases.all()[0]!;
  assert.equal(lease.mappings.size, LIMIT - held, 'the refused map is not recorded for the lease');
  assert.equal((await rig.sim.stats()).dmaMaps, LIMIT);
  await c.call('rawUnmap', { iova: iova(0), size: 4096 });
  await c.call('rawMap', { iova: iova(LIMIT), size: 4096 });
  assert.equal(lease.mappings.size, LIMIT - held);
});
