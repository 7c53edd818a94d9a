// A lease's virtual PCI config space is built at its first config access, not at VERSION (session.ts: a
// devlease client never touches it, and building it cost a cold acquire ~30 µs). Over the vfio-user wire,
// as a stock client (QEMU's vfio-user-pci) meets it: VERSION answers with nothing built; the first read
// returns the whole header the lease exposes (datasheet §1 ids, its BARs' type bits, the MSI-X capability
// for its one vector); later reads and writes work on that one space, which each session owns alone.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { LeaseResources } from '../../src/drivers/driver.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { CONFIG, le16, le32, u16, u32 } from '../helpers/guest-queue.js';

after(trackFdLeaks());

/** A queue lease's config space as the datasheet (§1, §2) and docs/PROTOCOL.md give it, BARs at address 0. */
function assertLeaseHeader(cs: Uint8Array, what: string): void {
  assert.equal(cs.length, 256, `${what}: the whole type-0 config space`);
  assert.equal(u16(cs, 0x00), 0x1234, `${what}: vendor id`);
  assert.equal(u16(cs, 0x02), 0x5a01, `${what}: device id`);
  assert.equal(u16(cs, 0x04), 0x0002, `${what}: command: memory space enabled`);
  assert.equal(u16(cs, 0x06) & 0x10, 0x10, `${what}: status: capability list`);
  assert.equal(u32(cs, 0x08), 0x1200_0001, `${what}: class 0x120000, revision 1`);
  assert.equal(cs[0x0e], 0, `${what}: header type 0`);
  assert.equal(u16(cs, 0x2c), 0x1234, `${what}: subsystem vendor`);
  assert.equal(u16(cs, 0x2e), 0x0001, `${what}: subsystem id`);
  const bars = Array.from({ length: 6 }, (_, i) => u32(cs, 0x10 + 4 * i));
  // BAR0: the MSI-X table/PBA, 32-bit memory (type bits 0); BAR2/3: the queue page, 64-bit prefetchable.
  assert.deepEqual(bars, [0, 0, 0xc, 0, 0, 0], `${what}: BAR registers`);
  assert.equal(cs[0x34], 0x40, `${what}: capability pointer`);
  assert.equal(cs[0x40], 0x11, `${what}: MSI-X capability id`);
  assert.equal(cs[0x41], 0, `${what}: the only capability`);
  assert.equal(u16(cs, 0x42), 0, `${what}: message control: one vector (N-1 = 0), disabled, not masked`);
  assert.equal(u32(cs, 0x44), 0x0000_0000, `${what}: table at offset 0 of BAR0`);
  assert.equal(u32(cs, 0x48), 0x0000_0010, `${what}: PBA after the one 16-byte entry, BAR0`);
}

test('a lease config space: none built at VERSION, the right header at the first read, one space per session after', async () => {
  const rig = await startRig();
  rig.broker.leases.log = () => {};
  // Count the builds: the driver's own builder, called through.
  const driver = rig.broker.leases.driver;
  const real = driver.leaseConfigSpace.bind(driver);
  const built: Uint8Array[] = [];
  driver.leaseConfigSpace = (res: LeaseResources) => {
    const cs = real(res);
    built.push(cs);
    return cs;
  };
  const clients: VfioUserClient[] = [];
  try {
    const a = await VfioUserClient.connect(rig.socket);
    clients.push(a);
    const devlease = a.serverCapabilities.raw.devlease as { lease?: unknown; kind?: unknown } | undefined;
    assert.equal(typeof devlease?.lease, 'string', 'VERSION answered with the lease');
    assert.equal(built.length, 0, 'VERSION built no config space');

    const first = await a.regionRead(CONFIG, 0, 256);
    assertLeaseHeader(first, 'first read');
    assert.equal(built.length, 1, 'built once, at the first read');
    const second = await a.regionRead(CONFIG, 0, 256);
    assert.deepEqual(second, first, 'a second read returns the same');
    assert.equal(built.length, 1, 'not built again');

    // Writes land in that one space: MSI-X enabled, BAR2 sized (all-ones reads back the 64 KiB page's mask).
    const page = await a.regionInfo(2);
    page.fd?.close(); // the queue page's slice fd: ours to close, not needed here
    assert.equal(page.size, 65536n, 'the queue page: QUEUE_STRIDE, 64 KiB by default');
    await a.regionWrite(CONFIG, 0x42, le16(0x8000));
    await a.regionWrite(CONFIG, 0x18, le32(0xffff_ffff));
    const written = await a.regionRead(CONFIG, 0, 256);
    assert.equal(u16(written, 0x42), 0x8000, 'MSI-X enable kept');
    assert.equal(u32(written, 0x18), 0xffff_000c, 'BAR2 decodes 64 KiB, type bits fixed');
    assert.equal(built.length, 1, 'writes built nothing either');

    // A second lease builds its own, as at reset: nothing of the first session's writes shows in it.
    const b = await VfioUserClient.connect(rig.socket);
    clients.push(b);
    assert.equal(built.length, 1, "the second lease's VERSION built nothing");
    assertLeaseHeader(await b.regionRead(CONFIG, 0, 256), 'second lease');
    assert.equal(built.length, 2, 'one space per session');
    assert.notEqual(built[0], built[1]);
    assert.equal(u16(await a.regionRead(CONFIG, 0x42, 2), 0), 0x8000, "the first lease's space unchanged");
  } finally {
    try {
      for (const c of clients) await c.close();
      await until('both leases released', () => rig.broker.leases.all().length === 0, 10_000);
    } finally {
      await rig.close();
    }
  }
});
