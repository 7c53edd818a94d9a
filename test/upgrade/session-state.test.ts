// A lease session's virtual PCI state survives an upgrade: a stock vfio-user
// client (as QEMU is: no devlease capability) enables memory decoding and bus
// mastering in the command register, places the MSI-X BAR, enables MSI-X and
// programs vector 0's table entry (address, data, unmasked), wires the vector
// to an eventfd and takes an interrupt. The broker is upgraded (a new process);
// the client reads back every value it wrote, and the next interrupt of its
// queue arrives on the same eventfd — with no new SET_IRQS.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd, type Mapping, MemFd } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { CONFIG, cqeAt, le16, le32, ringNop, u16, u32, wireGuestQueue } from '../helpers/guest-queue.js';
import { alive, UpgradeRig } from './rig.js';

after(trackFdLeaks());

test('config space and MSI-X table writes of a stock client survive an upgrade; its vector still fires', {
  timeout: 180_000,
}, async () => {
  const rig = await UpgradeRig.start();
  const client = await VfioUserClient.connect(rig.queueSocket);
  const efd = new EventFd();
  using ram = MemFd.create('guest-ram', { size: 65536 });
  const ramMap = ram.map();
  let page: Mapping | null = null;
  try {
    const cs = await client.regionRead(CONFIG, 0, 256);
    const bir = u32(cs, 0x44) & 7;
    const table = u32(cs, 0x44) & ~7;
    const barReg = 0x10 + 4 * bir;
    // What QEMU does on the way up: BAR placed, memory + bus master on, MSI-X enabled, vector 0 programmed.
    await client.regionWrite(CONFIG, barReg, le32(0xfeb0_0000));
    await client.regionWrite(CONFIG, 0x04, le16(0x0006));
    await client.regionWrite(CONFIG, 0x42, le16(0x8000));
    await client.regionWrite(bir, table + 0, le32(0xfee0_1000));
    await client.regionWrite(bir, table + 4, le32(0));
    await client.regionWrite(bir, table + 8, le32(0x4021));
    await client.regionWrite(bir, table + 12, le32(0)); // unmasked
    const wrote = {
      command: u16(await client.regionRead(CONFIG, 0x04, 2), 0),
      bar: u32(await client.regionRead(CONFIG, barReg, 4), 0),
      msixControl: u16(await client.regionRead(CONFIG, 0x42, 2), 0),
      entry: [...(await client.regionRead(bir, table, 16))],
    };
    assert.equal(wrote.command & 0x6, 0x6, 'memory and bus master on');
    assert.equal((wrote.bar & 0xffff_f000) >>> 0, 0xfeb0_0000, 'the BAR holds its address');
    assert.equal(wrote.msixControl & 0x8000, 0x8000, 'MSI-X enabled');

    page = await wireGuestQueue(client, efd, ram);
    const nop = async (slot: number, tag: bigint) => {
      ringNop(page!, ramMap, slot, tag);
      await until(`the vector to fire for descriptor ${slot}`, () => efd.read() !== null, 60_000);
      assert.equal(cqeAt(ramMap, slot).getBigUint64(0, true), tag, `completion ${slot} written`);
    };
    await nop(0, 0x77n);

    const old = await rig.brokerPid();
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true);
    assert.notEqual(await rig.brokerPid(), old, 'a new broker process serves the lease');
    await until('the old broker to exit', () => !alive(old), 30_000);

    const now = {
      command: u16(await client.regionRead(CONFIG, 0x04, 2), 0),
      bar: u32(await client.regionRead(CONFIG, barReg, 4), 0),
      msixControl: u16(await client.regionRead(CONFIG, 0x42, 2), 0),
      entry: [...(await client.regionRead(bir, table, 16))],
    };
    assert.deepEqual(now, wrote, 'the client reads back what it wrote before the upgrade');
    await nop(1, 0x78n); // the same eventfd, no new SET_IRQS
  } finally {
    page?.unmap();
    ramMap.unmap();
    await client.close();
    efd.close();
    await rig.close();
  }
});

// policy.dma_without_fd = "relay": the device's map of the client's memory has no fd, so the old broker hands
// it over without one, and the new broker serves it from the same lease's client (lease-dma-relay.ts).
test("a stock client's memory without an fd is still relayed after an upgrade: its queue runs on", {
  timeout: 180_000,
}, async () => {
  const rig = await UpgradeRig.start({}, { config: '[policy]\ndma_without_fd = "relay"\n' });
  const client = await VfioUserClient.connect(rig.queueSocket);
  const efd = new EventFd();
  const ram = new Uint8Array(65536);
  let page: Mapping | null = null;
  try {
    page = await wireGuestQueue(client, efd, ram); // mapped without an fd: every ring access is relayed
    const nop = async (slot: number, tag: bigint) => {
      ringNop(page!, ram, slot, tag);
      await until(`the vector to fire for descriptor ${slot}`, () => efd.read() !== null, 60_000);
      assert.equal(cqeAt(ram, slot).getBigUint64(0, true), tag, `completion ${slot} written`);
    };
    await nop(0, 0x91n);
    const old = await rig.brokerPid();
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true);
    assert.notEqual(await rig.brokerPid(), old, 'a new broker process serves the lease');
    await until('the old broker to exit', () => !alive(old), 30_000);
    await nop(1, 0x92n);
    await client.dmaUnmap({ iova: 0n, size: 65536n }); // the new broker knows the map: it unmaps it
  } finally {
    page?.unmap();
    await client.close();
    efd.close();
    await rig.close();
  }
});
