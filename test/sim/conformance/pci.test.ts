// SA-1 conformance, PCI side: identity, config space (BAR sizing, MSI-X
// capability), VFIO region and irq info. Expected values are typed in from
// the datasheet (./sa1-spec.ts), never imported from src/sim.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../../helpers/fds.js';
import { type Rig, rig } from '../helpers/real.js';
import { r32, w32 } from './owner.js';
import { BAR0_SIZE, DEFAULTS, IRQ, MSIX_ENTRY_SIZE, PCI, REGION } from './sa1-spec.js';

after(trackFdLeaks());

async function withRig<T>(opts: Parameters<typeof rig>[0], fn: (r: Rig) => Promise<T>): Promise<T> {
  const r = await rig(opts);
  try {
    return await fn(r);
  } finally {
    await r.close();
  }
}

/** Datasheet defaults: the rig's own small defaults overridden back to "not given". */
const DEFAULT_CONFIG = { numQueues: undefined, devmemSize: undefined, devmemGranule: undefined };

const cfg16 = async (r: Rig, off: number) =>
  (await r.client.regionRead(REGION.config, off, 2)).readUInt16LE(0);
const cfg8 = async (r: Rig, off: number) => (await r.client.regionRead(REGION.config, off, 1)).readUInt8(0);

test('§1 identity: vendor, device, class code, revision, subsystem in the type-0 header', async () => {
  await withRig(DEFAULT_CONFIG, async (r) => {
    assert.equal(await cfg16(r, 0x00), PCI.vendor, 'vendor id');
    assert.equal(await cfg16(r, 0x02), PCI.device, 'device id');
    assert.equal(await cfg8(r, 0x08), PCI.revision, 'revision');
    const cls = (await r.client.regionRead(REGION.config, 0x09, 3)).readUIntLE(0, 3);
    assert.equal(cls, PCI.classCode, 'class code');
    assert.equal(await cfg8(r, 0x0e), 0, 'header type 0');
    assert.equal(await cfg16(r, 0x2c), PCI.subsystemVendor, 'subsystem vendor id');
    assert.equal(await cfg16(r, 0x2e), PCI.subsystem, 'subsystem id');
    assert.equal(await cfg8(r, 0x3d), 0, 'interrupt pin: no INTx');
  });
});

/** Write all-ones to a BAR dword, read the size mask back. */
async function sizeBar(r: Rig, bar: number): Promise<number> {
  const at = 0x10 + 4 * bar;
  await w32(r.client, REGION.config, at, 0xffffffff);
  return r32(r.client, REGION.config, at);
}

for (const c of [
  { name: 'defaults', opts: DEFAULT_CONFIG, queues: DEFAULTS.numQueues, bar2: 64 * 65536, bar4: 64 << 20 },
  // 5 × 4096 = 20 KiB rounds up to 32 KiB.
  {
    name: '5 queues, 4 KiB stride, 1 MiB device memory',
    opts: { numQueues: 5, queueStride: 4096, devmemSize: 1 << 20, devmemGranule: 1 << 16 },
    queues: 5,
    bar2: 32 * 1024,
    bar4: 1 << 20,
  },
]) {
  test(`§1/§2 BAR sizing after all-ones, type bits (${c.name})`, async () => {
    await withRig(c.opts, async (r) => {
      // BAR0: 32-bit non-prefetchable memory (docs/SA-1.md): type bits 0.
      assert.equal(await sizeBar(r, 0), (~(BAR0_SIZE - 1) & 0xfffffff0) >>> 0, 'BAR0 size mask');
      assert.equal(await sizeBar(r, 1), 0, 'BAR1 unimplemented');
      // BAR2/BAR4: 64-bit (0b100) prefetchable (0b1000) memory; the upper dword is all size mask.
      assert.equal(await sizeBar(r, 2), ((~(c.bar2 - 1) & 0xfffffff0) | 0xc) >>> 0, 'BAR2 low dword');
      assert.equal(await sizeBar(r, 3), 0xffffffff, 'BAR2 high dword');
      assert.equal(await sizeBar(r, 4), ((~(c.bar4 - 1) & 0xfffffff0) | 0xc) >>> 0, 'BAR4 low dword');
      assert.equal(await sizeBar(r, 5), 0xffffffff, 'BAR4 high dword');
      assert.equal(await r32(r.client, REGION.config, 0x30), 0, 'no expansion ROM');
    });
  });

  test(`§2 region info: indexes, sizes, flags (${c.name})`, async () => {
    await withRig(c.opts, async (r) => {
      const info = await r.client.deviceInfo();
      assert.equal(info.num_regions, 9, 'VFIO_PCI_NUM_REGIONS');
      assert.equal(info.num_irqs, 5, 'VFIO_PCI_NUM_IRQS');
      const READ_WRITE = 0b11; // VFIO_REGION_INFO_FLAG_READ | _WRITE, no MMAP: slices come through §8
      const expected: Record<number, number> = {
        [REGION.bar0]: BAR0_SIZE,
        [REGION.bar2]: c.bar2,
        [REGION.bar4]: c.bar4,
        [REGION.config]: PCI.configSize,
      };
      for (let index = 0; index < 9; index++) {
        const ri = await r.client.regionInfo(index);
        try {
          assert.equal(ri.fd, null, `region ${index} offers no fd`);
          assert.equal(ri.size, BigInt(expected[index] ?? 0), `region ${index} size`);
          assert.equal(
            ri.flags & 0b111,
            expected[index] === undefined ? 0 : READ_WRITE,
            `region ${index} flags`,
          );
        } finally {
          ri.fd?.close();
        }
      }
    });
  });

  test(`§2.4 irq info: MSI-X NUM_QUEUES+1, ERR 1, REQ 1 (${c.name})`, async () => {
    await withRig(c.opts, async (r) => {
      const counts = {
        [IRQ.intx]: 0,
        [IRQ.msi]: 0,
        [IRQ.msix]: c.queues + 1,
        [IRQ.err]: 1,
        [IRQ.req]: 1,
      };
      for (const [index, count] of Object.entries(counts)) {
        const ii = await r.client.irqInfo(Number(index));
        assert.equal(ii.count, count, `irq index ${index} count`);
        // VFIO_IRQ_INFO_EVENTFD (1) on every index that has vectors.
        assert.equal(ii.flags & 1, count ? 1 : 0, `irq index ${index} eventfd flag`);
      }
    });
  });

  test(`§1/§2.1 MSI-X capability: table and PBA in BAR0 at 0x20000/0x30000, NUM_QUEUES+1 entries (${c.name})`, async () => {
    await withRig(c.opts, async (r) => {
      assert.ok((await cfg16(r, 0x06)) & (1 << 4), 'status: capability list');
      assert.equal(await cfg8(r, 0x34), PCI.msixCapOffset, 'capability pointer');
      const cap = PCI.msixCapOffset;
      assert.equal(await cfg8(r, cap), PCI.msixCapId, 'capability id MSI-X');
      assert.equal(await cfg8(r, cap + 1), 0, 'last capability');
      assert.equal((await cfg16(r, cap + 2)) & 0x7ff, c.queues, 'table size field (entries - 1)');
      const table = await r32(r.client, REGION.config, cap + 4);
      const pba = await r32(r.client, REGION.config, cap + 8);
      assert.deepEqual([table & 7, table & ~7], [0, 0x20000], 'table BIR 0, offset 0x20000');
      assert.deepEqual([pba & 7, pba & ~7], [0, 0x30000], 'PBA BIR 0, offset 0x30000');
      // The table fits below the PBA and BAR0's end for any NUM_QUEUES up to 1024.
      assert.ok(0x20000 + (c.queues + 1) * MSIX_ENTRY_SIZE <= 0x30000);
    });
  });
}
