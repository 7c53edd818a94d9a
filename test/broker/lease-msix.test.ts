// MSI-X in a lease device, as QEMU's vfio-user-pci finds it: a stock
// vfio-user client (no devlease capability) walks the capability list to an
// MSI-X capability sized to the lease's vectors, whose table and PBA are in
// a trapped BAR (no MMAP flag, no sparse areas), sizes that BAR, reads the
// MSIX irq info, wires vector 0 with SET_IRQS, and takes an interrupt from
// its queue — working in its own IOVA view, with its rings at address 0.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd, type Mapping, MemFd } from '../../src/sys/index.js';
import {
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { CONFIG, cqeAt, le32, ringNop, u16, u32, wireGuestQueue } from '../helpers/guest-queue.js';

after(trackFdLeaks());

test('a stock client finds MSI-X in the capability list, its table trapped, and takes a vector through SET_IRQS', async () => {
  const rig = await startRig();
  rig.broker.leases.log = () => {};
  const client = await VfioUserClient.connect(rig.socket);
  const efd = new EventFd();
  using ram = MemFd.create('guest-ram', { size: 65536 });
  const ramMap = ram.map();
  let page: Mapping | null = null;
  try {
    const cs = await client.regionRead(CONFIG, 0, 256);
    assert.equal(u16(cs, 0x06) & 0x10, 0x10, 'status: capability list');
    // Walk the list as QEMU's pci_find_capability does.
    const caps: [number, number][] = [];
    for (let at = cs[0x34]! & ~3; at; at = cs[at + 1]! & ~3) caps.push([cs[at]!, at]);
    assert.deepEqual(caps, [[0x11, 0x40]], 'one capability: MSI-X at 0x40');
    const ctl = u16(cs, 0x42);
    assert.equal((ctl & 0x7ff) + 1, 1, 'table size: the lease has one vector');
    assert.equal(ctl & 0xc000, 0, 'disabled, not masked at first');
    const table = u32(cs, 0x44);
    const pba = u32(cs, 0x48);
    const bir = table & 7;
    assert.equal(pba & 7, bir, 'table and PBA in one BAR');
    assert.notEqual(bir, 2, 'not the queue page BAR (mmap-able)');

    // The BAR sizes as a 32-bit memory BAR of the region's size.
    const info = await client.regionInfo(bir);
    assert.equal(info.flags, VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, 'trapped: no MMAP');
    assert.equal(info.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert.equal(info.fd, null);
    assert.deepEqual(info.caps.all, [], 'no sparse-mmap areas');
    assert.ok(
      info.size >= 4096n && (table & ~7) + 16 <= Number(info.size) && (pba & ~7) + 8 <= Number(info.size),
    );
    await client.regionWrite(CONFIG, 0x10 + 4 * bir, le32(0xffff_ffff));
    const sized = u32(await client.regionRead(CONFIG, 0x10 + 4 * bir, 4), 0);
    assert.equal(
      sized,
      (~(Number(info.size) - 1) & 0xffff_fff0) >>> 0,
      'BAR decodes the region size, 32-bit memory',
    );

    // Table entries are storage (masked at first), the PBA reads 0; Message Control's enable bit is writable.
    const entry = await client.regionRead(bir, table & ~7, 16);
    assert.equal(u32(entry, 12), 1, 'vector 0 masked at power-on');
    await client.regionWrite(bir, (table & ~7) + 8, le32(0x4021));
    assert.equal(u32(await client.regionRead(bir, (table & ~7) + 8, 4), 0), 0x4021);
    assert.equal(u32(await client.regionRead(bir, pba & ~7, 4), 0), 0);
    await client.regionWrite(CONFIG, 0x42, new Uint8Array([0, 0x80]));
    assert.equal(u16(await client.regionRead(CONFIG, 0x42, 2), 0) & 0x8000, 0x8000, 'MSI-X enable');

    const irq = await client.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX);
    assert.equal(irq.count, 1);
    assert.equal(irq.flags & VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_EVENTFD);
    // Its queue, as a guest driver runs it: rings in "guest RAM" mapped at view address 0.
    page = await wireGuestQueue(client, efd, ram);
    ringNop(page, ramMap, 0, 0x77n);
    await until('the vector to fire', () => efd.read() !== null);
    const cqe = cqeAt(ramMap, 0);
    assert.equal(cqe.getBigUint64(0, true), 0x77n, 'completion written at view 0x1000');
    assert.equal(cqe.getUint32(12, true), 1 << 16, 'status OK, phase 1');
  } finally {
    page?.unmap();
    ramMap.unmap();
    await client.close();
    efd.close();
    await rig.close();
  }
});
