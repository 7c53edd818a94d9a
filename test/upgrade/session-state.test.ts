// A lease session's virtual PCI state survives an upgrade: a stock vfio-user
// client (as QEMU is: no devlease capability) enables memory decoding and bus
// mastering in the command register, places the MSI-X BAR, enables MSI-X and
// programs vector 0's table entry (address, data, unmasked), wires the vector
// to an eventfd and takes an interrupt. The broker is upgraded (a new process);
// the client reads back every value it wrote, and the next interrupt of its
// queue arrives on the same eventfd — with no new SET_IRQS.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { RELAY_ACCESS_MS } from '../../src/broker/lease-dma-relay.js';
import { encodeDescriptor } from '../../src/sim/model/descriptor.js';
import { EventFd, type Mapping, MemFd } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import {
  CONFIG,
  cqeAt,
  le16,
  le32,
  programRings,
  ringNop,
  u16,
  u32,
  wireGuestQueue,
} from '../helpers/guest-queue.js';
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
// it over without one, and the new broker serves it from the same lease's client (lease-dma-relay.ts). Before
// the upgrade one relayed access timed out unanswered: its late reply reaches the new broker, which knows it
// (the session's peerDma state) and drops it, rather than close the connection over a reply to nothing.
test("a stock client's memory without an fd is still relayed after an upgrade, a late reply to the old broker dropped: its queue runs on", {
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
    // Memory that answers nothing until released: a COPY from it times out in the old broker.
    let release = (): void => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    let asked = 0;
    const slow = {
      read: async (_o: bigint, n: number) => {
        asked++;
        await held;
        return new Uint8Array(n);
      },
      write: async () => {},
    };
    await client.dmaMap({ iova: 0x10000n, size: 65536n, flags: 3, memory: slow });
    encodeDescriptor({ opcode: 1, tag: 0x93n, length: 4096, src: 0x10000n, dst: 0x4000n }, ram, 64);
    new DataView(page.u8.buffer, page.u8.byteOffset).setUint32(0x0c, 2, true); // SQ_TAIL
    await until('the device to ask for the held memory', () => asked === 1, 10_000);
    await new Promise((r) => setTimeout(r, RELAY_ACCESS_MS + 500)); // timed out: a late reply is owed
    const old = await rig.brokerPid();
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true);
    assert.notEqual(await rig.brokerPid(), old, 'a new broker process serves the lease');
    await until('the old broker to exit', () => !alive(old), 30_000);
    release(); // the late reply goes to the new broker
    // The queue stopped at the COPY's fault: reset it (through the new broker) and run a NOP.
    await client.reset();
    ram.fill(0, 0, 0x2000);
    programRings(page);
    ringNop(page, ram, 0, 0x94n);
    await until('the NOP after the upgrade', () => cqeAt(ram, 0).getBigUint64(0, true) === 0x94n, 30_000);
    assert.equal(cqeAt(ram, 0).getUint32(12, true) & 0xffff, 0, 'status OK');
    assert.equal(client.closed, false, 'the lease connection was kept');
    await client.dmaUnmap({ iova: 0n, size: 131072n }); // the new broker knows both maps: it unmaps them
  } finally {
    page?.unmap();
    await client.close();
    efd.close();
    await rig.close();
  }
});
