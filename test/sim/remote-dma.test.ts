// Owner memory without an fd (datasheet rev 2 §7): the simulator accepts the map and reaches the memory with
// VFIO_USER_DMA_READ/DMA_WRITE messages to the owner, which serves them from its own buffer (devlease's
// VfioUserClient, src/vfio/user/dma-maps.ts). Rings, payloads and the firmware image all live in that
// memory here; the owner's commands stay answered while the device waits on it; an unmap, a slow or
// vanished owner end such an access as IOMMU_FAULT, never with a hang.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { encodeDmaBufRequest } from '../../src/sim/model/slices.js';
import { Mapping } from '../../src/sys/index.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_PCI_BAR4_REGION_INDEX,
  vfio_device_feature_dma_buf_revoke,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import type { DmaMemory } from '../../src/vfio/user/dma-maps.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../../src/vfio/user/protocol.js';
import { trackFdLeaks } from '../helpers/fds.js';
import {
  boot,
  enableBusMaster,
  faultRecord,
  type QueueLayout,
  qcfg,
  RawQueue,
  r32,
  w32,
} from './conformance/owner.js';
import { BAR0, FW_STATUS, OP, Q_CTRL, Q_STATUS, QCFG, QPAGE, REGION, ST } from './conformance/sa1-spec.js';
import { type HostRegion, type Rig, rig, until } from './helpers/real.js';

after(trackFdLeaks());

const CONFIG = { numQueues: 4, queueStride: 16384, devmemSize: 1 << 20, devmemGranule: 1 << 16 };
const RW = VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE;
const FW = 0x10_0000n;
const HOST = 0x20_0000n;
const HOST_SIZE = 1 << 20;
const SLOW = 0x40_0000n;

/** Memory the owner keeps to itself: a buffer behind a map without an fd. */
function ownerMemory(size: number): { iova: bigint; view: Uint8Array } & { region: HostRegion } {
  const view = new Uint8Array(size);
  const mem = { iova: 0n, view };
  return { ...mem, region: mem as unknown as HostRegion };
}

async function mapNoFd(r: Rig, iova: bigint, size: number, memory: Uint8Array | DmaMemory): Promise<void> {
  await r.client.dmaMap({ iova, size, flags: RW, memory });
}

/**
 * Owner memory whose every access waits until release(): reads give `fill(offset)` bytes. `asked()`: accesses
 * the owner received.
 */
function heldMemory(fill: (offset: bigint) => number = () => 0): {
  memory: DmaMemory;
  release: () => void;
  asked: () => number;
} {
  let asked = 0;
  let release = (): void => {};
  const held = new Promise<void>((res) => {
    release = res;
  });
  const memory: DmaMemory = {
    read: async (offset, count) => {
      asked++;
      await held;
      return new Uint8Array(count).fill(fill(offset));
    },
    write: async () => {
      asked++;
      await held;
    },
  };
  return { memory, release, asked: () => asked };
}

function layout(host: HostRegion, q = 0): QueueLayout {
  return {
    q,
    stride: CONFIG.queueStride,
    host,
    sqAt: 0,
    cqAt: 0x1000,
    sqSize: 16,
    cqSize: 16,
    window: { base: host.iova, size: BigInt(host.view.length) },
  };
}

/** A simulator whose owner maps its memory without fds; `logged`: the simulator's log lines. */
async function withOwnerMemory(
  fn: (r: Rig, host: HostRegion, logged: string[]) => Promise<void>,
): Promise<void> {
  const logged: string[] = [];
  const r = await rig({ ...CONFIG, log: (line) => logged.push(line) });
  try {
    const fw = ownerMemory(64 * 1024);
    await mapNoFd(r, FW, 64 * 1024, fw.view);
    await boot(r.client, { ...fw.region, iova: FW } as HostRegion); // the image is fetched by DMA_READ
    const host = ownerMemory(HOST_SIZE);
    await mapNoFd(r, HOST, HOST_SIZE, host.view);
    await fn(r, { ...host.region, iova: HOST } as HostRegion, logged);
  } finally {
    await r.close();
  }
}

test('rings, payloads and the firmware in owner memory without an fd work through DMA_READ/DMA_WRITE', async () => {
  await withOwnerMemory(async (r, host) => {
    const q = new RawQueue(r.client, layout(host));
    await q.configure();
    const src = 0x8000;
    const dst = 0x20000;
    for (let i = 0; i < 6000; i++) host.view[src + i] = (i * 7 + 3) & 0xff;
    await q.submit([
      { opcode: OP.NOP, tag: 1n },
      { opcode: OP.COPY, length: 6000, src: HOST + BigInt(src), dst: HOST + BigInt(dst), tag: 2n },
      { opcode: OP.FILL, length: 4096, dst: HOST + 0x40000n, imm: 0x0102_0304_0506_0708n, tag: 3n },
      { opcode: OP.WRITE_IMM, dst: HOST + 0x50000n, imm: 0xfeed_face_cafe_beefn, tag: 4n },
      { opcode: OP.CRC32C, length: 6000, src: HOST + BigInt(src), tag: 5n },
    ]);
    const done = await q.reap(5);
    assert.deepEqual(
      done.map((c) => [c.tag, c.status]),
      [1n, 2n, 3n, 4n, 5n].map((t) => [t, ST.OK]),
      'every descriptor completed OK, its completion written into owner memory',
    );
    assert.deepEqual(host.view.subarray(dst, dst + 6000), host.view.subarray(src, src + 6000), 'COPY');
    const fill = Buffer.from(host.view.subarray(0x40000, 0x40000 + 4096));
    for (let i = 0; i < 4096; i += 8) assert.equal(fill.readBigUInt64LE(i), 0x0102_0304_0506_0708n, 'FILL');
    assert.equal(Buffer.from(host.view).readBigUInt64LE(0x50000), 0xfeed_face_cafe_beefn, 'WRITE_IMM');
    const stats = await r.sim.stats();
    assert.ok(stats.remoteAccesses > 0 && stats.remoteFailures === 0, JSON.stringify(stats));
  });
});

test('a device access the owner never answers: its unmap ends it as IOMMU_FAULT, and the owner was answered meanwhile', async () => {
  await withOwnerMemory(async (r, host, logged) => {
    // The owner holds its answer until after its unmap (it serves DMA one request at a time, so it must
    // answer at some point for the device's later writes to reach it).
    const { memory, release, asked } = heldMemory();
    await mapNoFd(r, SLOW, 0x10000, memory);
    const q = new RawQueue(r.client, {
      ...layout(host),
      window: { base: HOST, size: SLOW + 0x10000n - HOST },
    });
    await q.configure();
    await q.submit([{ opcode: OP.COPY, length: 64, src: SLOW, dst: HOST + 0x30000n, tag: 9n }]);
    await until(async () => asked() > 0, 'the device to read the stalled memory');
    // The device waits on the owner: register reads — BAR0, and the queue page (BAR2), which QEMU's vCPUs
    // read synchronously — are answered without it.
    assert.equal(await r32(r.client, REGION.bar0, BAR0.ID), 0x5a01_0001);
    assert.equal(await r32(r.client, REGION.bar2, QPAGE.SQ_TAIL), 1, 'SQ_TAIL through BAR2');
    await r.client.dmaUnmap({ iova: SLOW, size: 0x10000 });
    release(); // too late: the device gave the access up when the range was unmapped
    const [c] = await q.reap(1);
    assert.equal(c?.status, ST.IOMMU_FAULT, 'the copy from the unmapped memory faulted');
    // Ended by the unmap, not by its deadline (a register read that waited on the device would have held this
    // thread until the access timed out, which the simulator logs).
    assert.deepEqual(
      logged.filter((l) => l.includes('through the owner failed')),
      [],
      'no access timed out or failed on its own',
    );
    const rec = await faultRecord(r.client, 0);
    assert.equal(rec.iova, SLOW, 'the fault record names the address it could not read');
    assert.ok((await q.qcfg32(QCFG.Q_STATUS)) & Q_STATUS.ERROR);
  });
});

test('an owner command the device must serve waits for its access to owner memory, which the owner answers meanwhile', async () => {
  await withOwnerMemory(async (r, host) => {
    const { memory, release, asked } = heldMemory((offset) => Number(offset & 0xffn) + 1);
    await mapNoFd(r, SLOW, 0x10000, memory);
    const q = new RawQueue(r.client, {
      ...layout(host),
      window: { base: HOST, size: SLOW + 0x10000n - HOST },
    });
    await q.configure();
    await w32(r.client, REGION.bar0, qcfg(1, QCFG.Q_CTRL), Q_CTRL.ENABLE); // stored on the front end
    await q.submit([{ opcode: OP.COPY, length: 64, src: SLOW + 0x20n, dst: HOST + 0x30000n, tag: 7n }]);
    await until(async () => asked() > 0, 'the device to read the slow memory');
    // Doorbells stored through BAR2 while the device waits (the same SQ_TAIL: no new work) are answered, more
    // of them than the device's command ring holds (one wake post at a time).
    for (let i = 0; i < 300; i++) await w32(r.client, REGION.bar2, QPAGE.SQ_TAIL, 1);
    // Disabling an enabled queue is the device's to do: it is served after the COPY in progress, which waits on
    // the owner's answer. A front end blocked waiting for the device would never hand that answer over.
    let answered = false;
    const disabled = w32(r.client, REGION.bar0, qcfg(1, QCFG.Q_CTRL), 0).then(() => {
      answered = true;
    });
    const stats = r.sim.stats(); // the device's too: waited for without blocking, as the disable
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(answered, false, 'the disable waits for the device, which waits for the owner');
    release();
    await disabled;
    assert.ok((await stats).remoteAccesses > 0);
    const [c] = await q.reap(1);
    assert.deepEqual([c?.tag, c?.status], [7n, ST.OK], "the copy completed with the owner's bytes");
    assert.deepEqual(host.view.subarray(0x30000, 0x30040), new Uint8Array(64).fill(0x21));
    assert.equal((await q.qcfg32(QCFG.Q_STATUS)) & Q_STATUS.ERROR, 0);
    assert.equal((await r.sim.stats()).remoteFailures, 0, 'no access failed');
  });
});

test('an unmap in the middle of a device write to owner memory: nothing more is written, not even into a new map at the same IOVA', async () => {
  await withOwnerMemory(async (r, host) => {
    const old = new Uint8Array(0x10_0000);
    let writes = 0;
    let firstWrite = (): void => {};
    const first = new Promise<void>((res) => {
      firstWrite = res;
    });
    const slow: DmaMemory = {
      read: (offset, count) => old.slice(Number(offset), Number(offset) + count),
      write: async (offset, data) => {
        writes++;
        firstWrite();
        await new Promise((res) => setTimeout(res, 30)); // an owner slow to take each piece
        old.set(data, Number(offset));
      },
    };
    await mapNoFd(r, SLOW, old.length, slow);
    const q = new RawQueue(r.client, {
      ...layout(host),
      window: { base: HOST, size: SLOW + 0x10_0000n - HOST },
    });
    await q.configure();
    // 1 MiB FILL: sixteen 64 KiB DMA_WRITEs, one at a time.
    await q.submit([
      { opcode: OP.FILL, length: old.length, dst: SLOW, imm: 0x1111_1111_1111_1111n, tag: 5n },
    ]);
    await first;
    await r.client.dmaUnmap({ iova: SLOW, size: old.length });
    const fresh = new Uint8Array(old.length);
    await mapNoFd(r, SLOW, fresh.length, fresh);
    const [c] = await q.reap(1);
    assert.equal(c?.status, ST.IOMMU_FAULT, 'the fill faulted where its range was unmapped');
    assert.ok(writes < 16, `the fill stopped (${writes} of its 16 writes reached the owner)`);
    assert.equal(fresh.indexOf(0x11), -1, 'nothing of the fill landed in the new map');
  });
});

test('an owner that leaves while the device waits on its memory: nothing hangs, and the next owner is served', async () => {
  const r = await rig(CONFIG);
  try {
    const { memory, asked } = heldMemory(); // never released
    await mapNoFd(r, FW, 64 * 1024, memory);
    // FW_CMD: the device fetches the image from memory the owner never serves.
    await enableBusMaster(r.client);
    await w32(r.client, REGION.bar0, BAR0.FW_IOVA, Number(FW));
    await w32(r.client, REGION.bar0, BAR0.FW_LEN, 4096);
    await w32(r.client, REGION.bar0, BAR0.FW_CMD, 1);
    await until(async () => asked() > 0, 'the firmware fetch to reach the owner');
    r.client.close();
    await until(async () => !r.sim.ownerConnected, 'the owner to be gone');
    const stats = await r.sim.stats();
    assert.equal(stats.dmaMaps, 0, 'the maps went with the owner');
    assert.ok(stats.remoteFailures >= 1, 'the access failed instead of waiting on');
    const next = await VfioUserClient.connect(r.sim.socketPath);
    try {
      assert.equal(await r32(next, REGION.bar0, BAR0.ID), 0x5a01_0001, 'the next owner is served');
      assert.equal(
        await r32(next, REGION.bar0, BAR0.FW_STATUS),
        FW_STATUS.IOMMU_FAULT,
        'the fetch failed as an IOMMU fault',
      );
    } finally {
      next.close();
    }
  } finally {
    await r.close();
  }
});

test('a revoke while the owner has memory without an fd: waited for without blocking, the slice fd passed kept until the device is done', async () => {
  await withOwnerMemory(async (r) => {
    // A device-memory granule: its revoke goes to the device whole, with the fd passed (the device finds
    // the slice by the fd's inode).
    const granule = (
      await r.client.feature({
        flags: VFIO_DEVICE_FEATURE_GET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF,
        data: encodeDmaBufRequest(VFIO_PCI_BAR4_REGION_INDEX, [{ offset: 0n, length: 1n << 16n }]),
      })
    ).fds[0]!;
    try {
      const mapping = Mapping.map(granule.fd, { length: 1 << 16, guard: true });
      await r.client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
        fds: [granule],
      });
      void mapping.u8[0]; // the access that finds the memory gone (the guard turns it into zero pages)
      assert.ok(mapping.isRevoked(), "the holder's mapping of the granule is dead");
      mapping.unmap();
    } finally {
      granule.close();
    }
  });
});

test('an unmap of mapped memory fails the access in flight at once, and the device goes on with its next descriptor as soon as it took the unmap', async () => {
  await withOwnerMemory(async (r, host) => {
    const { memory, release, asked } = heldMemory();
    await mapNoFd(r, SLOW, 0x10000, memory);
    const mapped = await r.map(0x80_0000n, 0x1000); // memory the device maps (an fd)
    const window = { base: HOST, size: 0x80_1000n - HOST };
    const q0 = new RawQueue(r.client, { ...layout(host, 0), window });
    const q1 = new RawQueue(r.client, { ...layout(host, 1), sqAt: 0x2000, cqAt: 0x3000, window });
    await q0.configure();
    await q1.configure();
    await q0.submit([{ opcode: OP.COPY, length: 64, src: SLOW, dst: HOST + 0x30000n, tag: 1n }]);
    await until(async () => asked() > 0, 'the device to wait on the owner');
    await q1.submit([{ opcode: OP.NOP, tag: 2n }]); // waits behind queue 0's access
    // The owner waits for this unmap's reply (as QEMU does): the access in flight fails at once.
    await r.client.dmaUnmap({ iova: mapped.iova, size: 0x1000 });
    release();
    // The copy failed, and so did its completion's write (the owner cannot take it before its unmap is
    // answered): a fault record, queue 0 in ERROR.
    await until(async () => ((await q0.qcfg32(QCFG.Q_STATUS)) & Q_STATUS.ERROR) !== 0, 'queue 0 in ERROR');
    assert.equal((await faultRecord(r.client, 0)).code, ST.IOMMU_FAULT);
    const [c1] = await q1.reap(1);
    assert.deepEqual([c1?.tag, c1?.status], [2n, ST.OK], 'the next descriptor, after the unmap, went on');
  });
});
