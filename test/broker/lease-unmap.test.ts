// A lease's DMA_UNMAP takes whole mappings only: a range that would cut one is refused (EINVAL) and
// changes nothing, a range with none of the lease's mappings is ENOENT, and a range holding several
// unmaps them all. VFIO_DMA_UNMAP_FLAG_ALL (as QEMU sends it when a guest's IOMMU address space goes away)
// unmaps every mapping of the lease, at the device too, and is no error when there are none.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { VFIO_DMA_UNMAP_FLAG_ALL } from '../../src/vfio/user/protocol.js';
import { ClientProc, type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
let c: ClientProc;
let base: bigint;
const hex = (v: bigint) => `0x${v.toString(16)}`;
const mapped = () =>
  [...rig.broker.leases.all()[0]!.mappings.keys()].map((k) => k - base).sort((x, y) => (x < y ? -1 : 1));

before(async () => {
  rig = await startRig();
  c = await ClientProc.spawn();
  const { info } = await c.call<{ info: { iovaWindow: { base: string } } }>('connect', {
    socket: rig.socket,
  });
  base = BigInt(info.iovaWindow.base);
  // Two one-page mappings side by side, and a two-page one further up.
  await c.call('rawMap', { iova: hex(base), size: 4096 });
  await c.call('rawMap', { iova: hex(base + 0x1000n), size: 4096 });
  await c.call('rawMap', { iova: hex(base + 0x10000n), size: 8192 });
});

after(async () => {
  await c.exit();
  await rig.close();
  await leakCheck();
});

test('an unmap that would cut a mapping is refused and changes nothing', async () => {
  const err = await c.call('rawUnmap', { iova: hex(base + 0x10000n), size: 4096 }).catch((e) => e);
  assert.equal(err.code, 'EINVAL');
  assert.match(err.message, /must cover whole mappings/);
  // Also when the range holds a whole mapping beside the one it cuts: nothing is unmapped.
  const err2 = await c.call('rawUnmap', { iova: hex(base + 0x1000n), size: 0x10000 }).catch((e) => e);
  assert.equal(err2.code, 'EINVAL');
  assert.deepEqual(mapped(), [0n, 0x1000n, 0x10000n]);
});

test('an unmap of a range without mappings of the lease is ENOENT', async () => {
  const err = await c.call('rawUnmap', { iova: hex(base + 0x20000n), size: 4096 }).catch((e) => e);
  assert.equal(err.code, 'ENOENT');
  assert.match(err.message, /no mapping of this lease in \[0x[0-9a-f]+, \+0x1000\)/);
});

test('an unmap of a range holding whole mappings unmaps each of them', async () => {
  await c.call('rawUnmap', { iova: hex(base), size: 0x2000 });
  assert.deepEqual(mapped(), [0x10000n]);
  await c.call('rawUnmap', { iova: hex(base + 0x10000n), size: 8192 });
  assert.deepEqual(mapped(), []);
});

test('an unmap with VFIO_DMA_UNMAP_FLAG_ALL unmaps every mapping of the lease, at the device too; with none left it is no error', async () => {
  await c.call('rawMap', { iova: hex(base), size: 4096 });
  await c.call('rawMap', { iova: hex(base + 0x10000n), size: 8192 });
  await c.call('rawMap', { iova: hex(base + 0x40000n), size: 4096 });
  assert.deepEqual(mapped(), [0n, 0x10000n, 0x40000n]);
  const before = (await rig.sim.stats()).dmaMaps;
  await c.call('rawUnmap', { iova: '0x0', size: 0, flags: VFIO_DMA_UNMAP_FLAG_ALL });
  assert.deepEqual(mapped(), []);
  assert.equal((await rig.sim.stats()).dmaMaps, before - 3, 'the device let go of all three');
  await c.call('rawUnmap', { iova: '0x0', size: 0, flags: VFIO_DMA_UNMAP_FLAG_ALL });
  // The flag needs address and size 0, as the kernel's type1 and the vfio-user spec say.
  const err = await c
    .call('rawUnmap', { iova: hex(base), size: 4096, flags: VFIO_DMA_UNMAP_FLAG_ALL })
    .catch((e) => e);
  assert.equal(err.code, 'EINVAL');
  assert.match(err.message, /UNMAP_FLAG_ALL needs address and size 0/);
});
