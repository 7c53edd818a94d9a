// A device advertising fewer DMA maps than the broker's own limits allow (the SA-1 simulator advertises what its
// guard table holds: docs/SA-1.md, "IOMMU"): the broker relays maps as before, and the lease's map past the
// device's max_dma_maps reaches the lease client as the device's ENOSPC, with the lease's table unchanged and room
// again once it unmaps one.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { VfioUserClient } from '../../src/vfio/user/client.js';
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

// What a lease advertises: a stock client (QEMU keeps max_dma_maps as its container's mapping limit) is told what
// the lease can hold — the smaller of the policy's max_mappings for its uid and the device's own max_dma_maps —
// not the spec's default 65535, which the device behind would refuse long before.
test("a lease's VERSION reply advertises the smaller of the device's max_dma_maps and the policy's max_mappings", async () => {
  const stock = await VfioUserClient.connect(rig.socket);
  try {
    assert.equal(stock.serverCapabilities.maxDmaMaps, LIMIT, "the device's limit (policy default 1024)");
  } finally {
    stock.close();
  }
  const uid = process.getuid!();
  const small = await startRig({ config: { policy: { rule: [{ uid, max_leases: 4, max_mappings: 3 }] } } });
  try {
    const c2 = await VfioUserClient.connect(small.socket);
    try {
      assert.equal(c2.serverCapabilities.maxDmaMaps, 3, "the policy's max_mappings, under the device's 3904");
    } finally {
      c2.close();
    }
  } finally {
    await small.close();
  }
});
