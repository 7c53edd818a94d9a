// The owner commands that only touch tables (DMA_MAP, DMA_UNMAP, SET_IRQS,
// GET_REGION_IO_FDS) are served by the simulator's front end without a
// round trip to the device worker (issue 16), and the datasheet's rules
// still hold as the owner sees them: a descriptor submitted right after a
// DMA_MAP is answered finds the map even on a spinning device, and once a
// DMA_UNMAP is answered the device holds no mapping of the memory (§7).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { MemFd } from '../../src/sys/index.js';
import { VFIO_PCI_BAR2_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { BAR0, qcfg, r32, TestQueue, w32 } from './helpers/driver.js';
import { bootedRig, mappingsOf, openFds, untilWorkerAnswers, workerCommands } from './helpers/real.js';

after(trackFdLeaks());

const HOST_IOVA = 0x20_0000n;
const VICTIM_IOVA = 0x80_0000n;

/** VFIO_DEVICE_FEATURE_DMA_BUF payload: queue page 1 of BAR2, read-write. */
function dmaBufRequest(): Buffer {
  const req = Buffer.alloc(32);
  req.writeUInt32LE(VFIO_PCI_BAR2_REGION_INDEX, 0);
  req.writeUInt32LE(0o2 | 0o2000000, 4); // O_RDWR | O_CLOEXEC
  req.writeUInt32LE(1, 12); // one range
  req.writeBigUInt64LE(0x1_0000n, 16); // the default 64 KiB stride
  req.writeBigUInt64LE(0x1_0000n, 24);
  return req;
}

test('DMA_MAP, DMA_UNMAP, SET_IRQS, slice fds and GET_REGION_IO_FDS are answered without the device worker', async () => {
  const r = await bootedRig();
  try {
    const memfd = MemFd.create('sa1-test-tables', { size: 0x2000 });
    try {
      const served = await workerCommands(r, async () => {
        await r.client.dmaMap({ fd: memfd.fd, iova: VICTIM_IOVA, size: 0x2000, flags: 3 });
        await r.eventfd(1);
        await r.eventfd(1); // replaces the first: the old eventfd is closed by the rig, not in use by the device
        const slice = await r.client.feature({
          flags: 1 << 16 /* GET */,
          feature: 11,
          data: dmaBufRequest(),
        });
        assert.equal(slice.fds.length, 1, 'one slice fd for the queue page');
        for (const f of slice.fds) f.close();
        const io = await r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
        for (const f of io.fds) f.close();
        assert.equal(io.fds.length, 4, 'one kick fd per queue page');
        await r.client.dmaUnmap({ iova: VICTIM_IOVA, size: 0x2000 });
      });
      assert.equal(served, 0, 'none of them needed the device worker');
      assert.equal(
        (await r.sim.stats()).dmaMaps,
        1,
        'the device took the map and the unmap (firmware map left)',
      );
      await assert.rejects(r.client.dmaUnmap({ iova: VICTIM_IOVA, size: 0x2000 }), /ENOENT/);
    } finally {
      memfd.close();
    }
  } finally {
    await r.close();
  }
});

test('a spinning device finds a map answered just before the doorbell, and lets go of it at the unmap', async () => {
  const before = openFds();
  const r = await bootedRig({ idlePollUs: 0 });
  try {
    const host = await r.map(HOST_IOVA, 0x1_0000);
    const window = { base: HOST_IOVA, size: 0x100_0000n }; // the ring and the map both
    const tq = new TestQueue(
      r.bus,
      { q: 0, mem: { iova: HOST_IOVA, view: host.view.subarray(0, 0x1000) }, sqSize: 8, cqSize: 8, window },
      r.sim.options.queueStride,
    );
    await tq.configure();
    const dst = HOST_IOVA + 0x8000n;
    for (let i = 0; i < 40; i++) {
      const name = `sa1-test-fresh-${process.pid}-${i}`;
      const memfd = MemFd.create(name, { size: 0x1000 });
      try {
        const bytes = memfd.map();
        bytes.u8.fill(i + 1, 0, 64);
        bytes.unmap();
        await r.client.dmaMap({ fd: memfd.fd, iova: VICTIM_IOVA, size: 0x1000, flags: 3 });
        await tq.submit([{ opcode: ds.OP_COPY, length: 64, src: VICTIM_IOVA, dst, tag: BigInt(i) }]);
        const [c] = await tq.reap(1);
        assert.deepEqual([c?.tag, c?.status], [BigInt(i), ds.ST_OK], `descriptor ${i} found its map`);
        assert.equal(host.view[0x8000], i + 1, 'the bytes came from the memory just mapped');
        await r.client.dmaUnmap({ iova: VICTIM_IOVA, size: 0x1000 });
        assert.equal(mappingsOf(name), 0, 'once DMA_UNMAP is answered the device maps none of it');
      } finally {
        memfd.close();
      }
    }
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('more DMA table updates than the mailbox holds reach a sleeping device, in order', async () => {
  const r = await bootedRig(); // no queue enabled: the device sleeps until an owner command wakes it
  try {
    const memfd = MemFd.create('sa1-test-many-posts', { size: 0x1000 });
    try {
      const iova = (i: number) => VICTIM_IOVA + BigInt(i) * 0x1000n;
      const maps = 300; // more than the mailbox's 256 slots, all posted one way and none waking the device
      for (let i = 0; i < maps; i++) {
        await r.client.dmaMap({ fd: memfd.fd, iova: iova(i), size: 0x1000, flags: 3 });
      }
      // An unmap (in a slot) then a map of the same range (its buffer on the port), each: applied out of
      // order, the map would find the range taken and the device would refuse it.
      for (let i = 0; i < maps; i++) {
        await r.client.dmaUnmap({ iova: iova(i), size: 0x1000 });
        await r.client.dmaMap({ fd: memfd.fd, iova: iova(i), size: 0x1000, flags: 3 });
      }
      const stats = await r.sim.stats();
      assert.equal(stats.postFailures, 0, 'the device refused none of the updates');
      assert.equal(stats.dmaMaps, maps + 1, 'the device holds every map (and the firmware map)');
    } finally {
      memfd.close();
    }
  } finally {
    await r.close();
  }
});

test('a DMA_MAP, DMA_UNMAP or Q_CTRL write that finds the mailbox full fails with EIO and changes nothing', async () => {
  // The worker stalls (a fault injection) while the owner fills all 256 slots with one-way maps: the front
  // end waits its command timeout for a free slot, then refuses the next map and unmap before touching its
  // table, so after the stall the refused map's range is free and the refused unmap's map still held.
  const r = await bootedRig({ commandTimeoutMs: 300 });
  try {
    const memfd = MemFd.create('sa1-test-full-ring', { size: 0x1000 });
    try {
      const iova = (i: number) => VICTIM_IOVA + BigInt(i) * 0x1000n;
      const map = (i: number) => r.client.dmaMap({ fd: memfd.fd, iova: iova(i), size: 0x1000, flags: 3 });
      const slots = 256;
      r.sim.inject({ kind: 'stall', ms: 4000 });
      for (let i = 0; i < slots; i++) await map(i);
      await assert.rejects(map(slots), /EIO/, 'no slot for the map');
      await assert.rejects(
        r.client.dmaUnmap({ iova: iova(0), size: 0x1000 }),
        /EIO/,
        'no slot for the unmap',
      );
      // A register write the worker need not see still completes; one it must see is refused unapplied.
      await w32(r.bus, BAR0, ds.REG_SCRATCH, 0x5a5a_0001);
      assert.equal(await r32(r.bus, BAR0, ds.REG_SCRATCH), 0x5a5a_0001, 'SCRATCH needs no slot');
      await assert.rejects(
        w32(r.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_ENABLE),
        /EIO/,
        'no slot for ENABLE',
      );
      assert.equal(
        await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)),
        0,
        'the refused ENABLE left the queue disabled',
      );
      await untilWorkerAnswers(r);
      await map(slots); // its range was left free
      await r.client.dmaUnmap({ iova: iova(0), size: 0x1000 }); // its map was kept
      const stats = await r.sim.stats();
      assert.equal(stats.postFailures, 0, 'the device refused none of the updates');
      assert.equal(stats.dmaMaps, slots + 1, 'the device holds maps 1..256 and the firmware map');
    } finally {
      memfd.close();
    }
  } finally {
    await r.close();
  }
});
