// A lease's config space describes its BARs as the device's own are: I/O or
// memory, 64-bit (upper half in the next register), prefetchable, each sized
// exactly as REGION_INFO gives the lease region. A client sizes them the PCI
// way: all-ones written, the mask read back.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, type Lease } from '../../src/client/lease.js';
import { VFIO_PCI_CONFIG_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { BARS } from '../fixtures/vfio-user/bar-device.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { withGenericBroker } from '../helpers/generic-broker.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const CONFIG = VFIO_PCI_CONFIG_REGION_INDEX;

async function readBar(lease: Lease, i: number): Promise<number> {
  const b = await lease.client.regionRead(CONFIG, 0x10 + 4 * i, 4);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

async function writeBar(lease: Lease, i: number, value: number): Promise<void> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  await lease.client.regionWrite(CONFIG, 0x10 + 4 * i, b);
}

/** Size all six BAR registers at once (as an OS does: all-ones, read back), then restore them. */
async function sizeBars(lease: Lease): Promise<{ before: number[]; masks: number[] }> {
  const before: number[] = [];
  const masks: number[] = [];
  for (let i = 0; i < 6; i++) before.push(await readBar(lease, i));
  for (let i = 0; i < 6; i++) await writeBar(lease, i, 0xffffffff);
  for (let i = 0; i < 6; i++) masks.push(await readBar(lease, i));
  for (let i = 0; i < 6; i++) await writeBar(lease, i, before[i]!);
  return { before, masks };
}

const hex = (v: number[]) => v.map((x) => `0x${x.toString(16).padStart(8, '0')}`);

test('I/O, 32-bit, 64-bit prefetchable and >4 GiB BARs of a device size in the lease as they do on the device', async () => {
  await withGenericBroker({ model: 'bars' }, async (broker, socket) => {
    assert.equal(broker.driver.name, 'generic');
    const lease = await connect({ socket });
    try {
      const { before, masks } = await sizeBars(lease);
      // Type bits alone (address 0): I/O; 32-bit memory; 64-bit prefetchable + upper; 64-bit + upper.
      assert.deepEqual(hex(before), hex([0x1, 0x0, 0xc, 0x0, 0x4, 0x0]));
      assert.deepEqual(
        hex(masks),
        hex([
          0xfffffff9, // 8-byte I/O BAR: bit 0 set, sized to 8 (not 16)
          0xfffff000, // 4 KiB, 32-bit, non-prefetchable
          0xffff000c, // 64 KiB, 64-bit prefetchable...
          0xffffffff, // ...whose upper half is all address
          0x00000004, // 8 GiB, 64-bit: nothing of the size in the low dword...
          0xfffffffe, // ...the upper dword holds it
        ]),
      );
      // Each BAR decodes exactly what REGION_INFO says its lease region holds.
      for (const i of [0, 1, 2, 4]) {
        const low = BigInt(masks[i]! & (i === 0 ? ~0x3 : ~0xf)) & 0xffff_ffffn;
        const full = i === 2 || i === 4 ? (BigInt(masks[i + 1]!) << 32n) | low : low | 0xffff_ffff_0000_0000n;
        const decoded = (~full & 0xffff_ffff_ffff_ffffn) + 1n;
        const info = await lease.client.regionInfo(i);
        info.fd?.close();
        assert.equal(decoded, info.size, `BAR${i}`);
        assert.equal(info.size, BARS[i]!.size, `BAR${i} region`);
      }
      // Restored: each BAR reads its type bits again; an address written is kept within the size's bits.
      for (let i = 0; i < 6; i++) assert.equal(await readBar(lease, i), before[i], `BAR${i} restored`);
      await writeBar(lease, 2, 0xfe01_2345);
      assert.equal(await readBar(lease, 2), 0xfe01_000c);
      await writeBar(lease, 0, 0x0000_c00f);
      assert.equal(await readBar(lease, 0), 0x0000_c009);
    } finally {
      lease.close();
    }
  });
});

test("an SA-1 lease's queue page is a 64-bit prefetchable BAR2, as on the device, sized to the page", async () => {
  const rig = await startRig({ sim: { queueStride: 0x10000 } });
  const lease = await connect({ socket: rig.socket });
  try {
    const { masks } = await sizeBars(lease);
    // BAR0: the lease's MSI-X table and PBA, a 4 KiB 32-bit memory BAR (lease-msix.test.ts).
    assert.deepEqual(hex(masks), hex([0xfffff000, 0, 0xffff000c, 0xffffffff, 0, 0]));
  } finally {
    lease.close();
    await rig.close();
  }
});
