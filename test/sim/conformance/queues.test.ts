// SA-1 conformance, the data path: descriptors written as raw bytes at the
// datasheet's offsets, completions read the same way (tag, result, status,
// phase), every opcode and flag, status codes 0..7 with their fault records,
// queue-page registers, the CRC32C vectors of RFC 3720, and slices of BAR2
// and BAR4 through feature 11. Expected values typed in (./sa1-spec.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Mapping } from '../../../src/sys/index.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { type HostRegion, type Rig, rig, until } from '../helpers/real.js';
import {
  bootRig,
  crc32cReference,
  faultRecord,
  type QueueLayout,
  qcfg,
  RawQueue,
  r32,
  r64,
  w32,
} from './owner.js';
import {
  BAR0,
  CRC32C_VECTORS,
  FEATURE,
  FLAG,
  IO_FD_TYPE,
  IRQ_MODE,
  MAX_LENGTH,
  OP,
  Q_NOTIFY,
  Q_STATUS,
  QCFG,
  QPAGE,
  REGION,
  ST,
  STATUS,
} from './sa1-spec.js';

after(trackFdLeaks());

const CONFIG = { numQueues: 4, queueStride: 16384, devmemSize: 1 << 20, devmemGranule: 1 << 16 };
const HOST = 0x20_0000n;
const HOST_SIZE = 1 << 20;

async function withHost(fn: (r: Rig, host: HostRegion) => Promise<void>): Promise<void> {
  const r = await rig(CONFIG);
  try {
    await bootRig(r);
    await fn(r, await r.map(HOST, HOST_SIZE));
  } finally {
    await r.close();
  }
}
const buf = (u8: Uint8Array) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);

test('reference CRC32C matches RFC 3720 B.4 (the test checks itself before it checks the device)', () => {
  for (const v of CRC32C_VECTORS) assert.equal(crc32cReference(v.data), v.crc, v.name);
});

test('§3 every opcode and flag from raw SQE bytes; CQE tag/result/status/phase across ring wraps; counters', async () => {
  await withHost(async (r, host) => {
    const h = buf(host.view);
    const irq = await r.eventfd(2);
    const layout: QueueLayout = {
      q: 2,
      stride: CONFIG.queueStride,
      host,
      sqAt: 0,
      sqSize: 4,
      cqAt: 0x1000,
      cqSize: 2, // phase flips every two completions
      window: { base: HOST, size: BigInt(HOST_SIZE) },
      devmem: { base: 0x1_0000, size: 0x1_0000 },
      vector: 2,
      irqMode: IRQ_MODE.FLAGGED,
    };
    const q = new RawQueue(r.client, layout);
    await q.configure();
    let bytes = 0n;
    const phases: number[] = [];
    const run = async (entries: Parameters<RawQueue['submit']>[0]) => {
      await q.submit(entries);
      const done = await q.reap(entries.length);
      phases.push(...done.map((c) => c.phase));
      for (const [i, c] of done.entries()) {
        assert.equal(c.tag, entries[i]?.tag, 'tag copied into the completion');
        assert.equal(c.status, ST.OK, `status of tag ${c.tag}`);
      }
      return done;
    };

    const imm = 0x0123_4567_89ab_cdefn;
    const [nop, wimm] = await run([
      { opcode: OP.NOP, tag: 0x1111_2222_3333_4444n, src: 0xdeadn, length: 0 },
      { opcode: OP.WRITE_IMM, flags: FLAG.INTR, dst: HOST + 0x2000n, imm, tag: 0xffff_ffff_ffff_fff0n },
    ]);
    bytes += 8n;
    assert.equal(nop?.result, 0);
    assert.equal(wimm?.result, 0);
    assert.equal(h.readBigUInt64LE(0x2000), imm, 'WRITE_IMM: 8 bytes at dst');
    await until(() => irq.read() !== null, 'INTR completion raises Q_VECTOR');

    h.fill(0xee, 0x3000, 0x3020);
    for (let i = 0; i < 4096; i++) h[0x4000 + i] = (i * 7) % 256;
    await run([
      { opcode: OP.FILL, length: 13, dst: HOST + 0x3000n, imm: 0x0807_0605_0403_0201n, tag: 3n },
      { opcode: OP.COPY, length: 4096, src: HOST + 0x4000n, dst: HOST + 0x5000n, tag: 4n },
    ]);
    bytes += 13n + 4096n;
    assert.deepEqual([...h.subarray(0x3000, 0x300e)], [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 0xee], 'FILL');
    assert.ok(h.subarray(0x4000, 0x5000).equals(h.subarray(0x5000, 0x6000)), 'COPY');

    for (let i = 0; i < CRC32C_VECTORS.length; i += 2) {
      const pair = CRC32C_VECTORS.slice(i, i + 2);
      const entries = pair.map((v, k) => {
        const at = 0x6000 + (i + k) * 0x100;
        host.view.set(v.data, at);
        bytes += BigInt(v.data.length);
        return { opcode: OP.CRC32C, length: v.data.length, src: HOST + BigInt(at), tag: BigInt(100 + i + k) };
      });
      const done = await run(entries);
      assert.deepEqual(
        done.map((c) => c.result),
        pair.map((v) => v.crc),
        `CRC32C result: ${pair.map((v) => v.name).join(', ')}`,
      );
    }

    // Device memory: host → BAR4 offset inside [Q_MEM_BASE, +Q_MEM_SIZE), and back.
    await run([
      { opcode: OP.COPY, flags: FLAG.DST_DEVMEM, length: 256, src: HOST + 0x4000n, dst: 0x1_0100n, tag: 5n },
      { opcode: OP.COPY, flags: FLAG.SRC_DEVMEM, length: 256, src: 0x1_0100n, dst: HOST + 0x7000n, tag: 6n },
    ]);
    bytes += 512n;
    const devmem = await r.client.regionRead(REGION.bar4, 0x1_0100, 256);
    assert.ok(devmem.equals(h.subarray(0x4000, 0x4100)), 'DST_DEVMEM wrote BAR4');
    assert.ok(h.subarray(0x7000, 0x7100).equals(h.subarray(0x4000, 0x4100)), 'SRC_DEVMEM read BAR4');
    assert.equal(irq.read(), null, 'IRQ_MODE 0: no interrupt without INTR');

    const total = phases.length;
    assert.deepEqual(
      phases,
      Array.from({ length: total }, (_, i) => (Math.floor(i / 2) % 2 === 0 ? 1 : 0)),
      'phase 1 on the first pass, flipping on every wrap',
    );
    assert.equal(await q.qcfg64(QCFG.Q_COMPLETED), BigInt(total), 'Q_COMPLETED');
    assert.equal(await q.qcfg64(QCFG.Q_BYTES), bytes, 'Q_BYTES: lengths, 8 for WRITE_IMM');
    assert.equal(await q.qcfg32(QCFG.Q_INFLIGHT), 0);
    assert.equal(await q.qcfg32(QCFG.Q_STATUS), Q_STATUS.RUNNING | Q_STATUS.IDLE);
    assert.equal(await q.pageRead32(QPAGE.SQ_HEAD), total, 'SQ_HEAD');
    assert.equal(await q.pageRead32(QPAGE.CQ_TAIL), total, 'CQ_TAIL');
    assert.equal(await q.pageRead32(QPAGE.Q_ERROR), 0);

    await q.pageWrite32(QPAGE.IRQ_MODE, IRQ_MODE.EVERY);
    await run([{ opcode: OP.NOP, tag: 7n }]);
    await until(() => irq.read() !== null, 'IRQ_MODE 1: every completion interrupts');

    // Q_VECTOR is a 4-byte register: all 32 bits are kept, and 0x10002 is no vector (past the MSI-X table),
    // not vector 2 (docs/SA-1.md). A NOP then signals nothing; one after Q_VECTOR 2 again signals vector 2
    // once: had the first signalled too, the eventfd's count would read 2.
    await w32(r.client, REGION.bar0, qcfg(2, QCFG.Q_VECTOR), 0x1_0002);
    assert.equal(
      await r32(r.client, REGION.bar0, qcfg(2, QCFG.Q_VECTOR)),
      0x1_0002,
      'Q_VECTOR keeps 32 bits',
    );
    await run([{ opcode: OP.NOP, tag: 8n }]);
    await w32(r.client, REGION.bar0, qcfg(2, QCFG.Q_VECTOR), 2);
    await run([{ opcode: OP.NOP, tag: 9n }]);
    let count: bigint | null = null;
    await until(() => {
      count = irq.read();
      return count !== null;
    }, 'the NOP with Q_VECTOR 2 interrupts');
    assert.equal(count, 1n, 'Q_VECTOR 0x10002: no interrupt on vector 2');
  });
});

test('§4 status codes 1..7, §5 fault records, ERROR state and queue reset', async () => {
  await withHost(async (r, host) => {
    const NQ = CONFIG.numQueues;
    const faultVector = await r.eventfd(NQ);
    const layout: QueueLayout = {
      q: 1,
      stride: CONFIG.queueStride,
      host,
      sqAt: 0,
      sqSize: 8,
      cqAt: 0x1000,
      cqSize: 8,
      window: { base: HOST, size: 2n * BigInt(HOST_SIZE) }, // the upper half is not mapped
      devmem: { base: 0x2_0000, size: 0x1_0000 },
      vector: 1,
    };
    let q = new RawQueue(r.client, layout);
    await q.configure();
    let faults = 0;
    const statuses = async (entries: Parameters<RawQueue['submit']>[0]) => {
      await q.submit(entries);
      return (await q.reap(entries.length)).map((c) => [c.tag, c.status]);
    };
    /** A descriptor that faults: completion with status and tag, fault record, queue in ERROR. */
    const faulting = async (e: Parameters<RawQueue['submit']>[0][0], code: number, iova: bigint) => {
      assert.deepEqual(await statuses([e]), [[e.tag, code]], `status ${code}`);
      await expectFault(code, iova);
      await q.reset();
      await q.configure();
    };
    const expectFault = async (code: number, iova: bigint) => {
      faults++;
      await until(
        async () => (await r32(r.client, REGION.bar0, BAR0.FAULT_HEAD)) === faults,
        `fault ${code}`,
      );
      assert.deepEqual(await faultRecord(r.client, faults - 1), { queue: 1, code, reserved: 0, iova });
      await until(() => faultVector.read() !== null, 'fault vector NUM_QUEUES');
      const st = await q.qcfg32(QCFG.Q_STATUS);
      assert.equal(st & Q_STATUS.ERROR, Q_STATUS.ERROR, 'Q_STATUS.ERROR');
      assert.equal((st >>> Q_STATUS.ERROR_SHIFT) & 0xff, code, 'Q_STATUS b8..15');
      assert.equal(await q.pageRead32(QPAGE.Q_ERROR), code, 'Q_ERROR mirrors Q_STATUS b8..15');
      assert.ok((await r32(r.client, REGION.bar0, BAR0.STATUS)) & STATUS.FAULT_PENDING);
    };

    assert.deepEqual(
      await statuses([
        { opcode: 5, tag: 1n },
        { opcode: OP.NOP, tag: 2n, poke: [[2, 1]] },
        { opcode: OP.NOP, tag: 3n, poke: [[40, 1]] },
        { opcode: OP.NOP, tag: 4n, flags: 0x08 },
      ]),
      [1n, 2n, 3n, 4n].map((t) => [t, ST.BAD_OPCODE]),
      'BAD_OPCODE: unknown opcode, reserved bytes 2..3 or 40..63, undefined flag',
    );
    assert.deepEqual(
      await statuses([
        { opcode: OP.COPY, length: 0, src: HOST, dst: HOST + 0x8000n, tag: 5n },
        { opcode: OP.FILL, length: MAX_LENGTH + 1, dst: HOST, tag: 6n },
        { opcode: OP.CRC32C, length: 0, src: HOST, tag: 7n },
      ]),
      [5n, 6n, 7n].map((t) => [t, ST.BAD_LENGTH]),
      'BAD_LENGTH: 0 or over 16 MiB',
    );
    assert.equal((await q.qcfg32(QCFG.Q_STATUS)) & Q_STATUS.ERROR, 0, 'the queue continues after 1 and 2');

    const below = HOST - 0x1000n;
    await faulting(
      { opcode: OP.COPY, length: 64, src: below, dst: HOST + 0x8000n, tag: 8n },
      ST.WINDOW_VIOLATION,
      below,
    );
    assert.equal(await q.qcfg64(QCFG.Q_WIN_SIZE), 2n * BigInt(HOST_SIZE), 'a queue reset keeps the windows');
    const unmapped = HOST + BigInt(HOST_SIZE) + 0x40n;
    await faulting(
      { opcode: OP.COPY, length: 64, src: HOST, dst: unmapped, tag: 9n },
      ST.IOMMU_FAULT,
      unmapped,
    );
    await faulting(
      { opcode: OP.COPY, flags: FLAG.SRC_DEVMEM, length: 16, src: 0x3_0000n, dst: HOST + 0x8000n, tag: 10n },
      ST.DEVMEM_VIOLATION,
      0x3_0000n,
    );

    // ABORTED: a descriptor held in flight (injected delay) when the queue is reset.
    r.sim.setDescriptorDelay(60_000, 1);
    await q.submit([{ opcode: OP.NOP, tag: 11n }]);
    await until(async () => (await q.qcfg32(QCFG.Q_INFLIGHT)) === 1, 'Q_INFLIGHT 1');
    assert.equal((await q.qcfg32(QCFG.Q_STATUS)) & Q_STATUS.IDLE, 0, 'not IDLE with work in flight');
    await r.client.regionWrite(REGION.bar0, BAR0.QCFG + 64 * 1 + QCFG.Q_CTRL, Buffer.from([2, 0, 0, 0]));
    await until(() => q.cqe(0).phase === 1, 'ABORTED completion');
    assert.deepEqual([q.cqe(0).tag, q.cqe(0).status], [11n, ST.ABORTED]);
    r.sim.setDescriptorDelay(0, 1);
    await q.reset();

    // BAD_QUEUE_CONFIG: a misaligned SQ_BASE; only the fault record, with the base as its iova.
    q = new RawQueue(r.client, { ...layout, sqAt: 0x20 });
    await q.configure();
    await q.submit([{ opcode: OP.NOP, tag: 12n }]);
    await expectFault(ST.BAD_QUEUE_CONFIG, HOST + 0x20n);
    assert.equal(q.cqe(0).phase, 0, 'no completion written');
    await q.reset();
    // ... and a doorbell more than SQ_SIZE ahead of SQ_HEAD, with SQ_TAIL as the "iova".
    q = new RawQueue(r.client, layout);
    await q.configure();
    await q.pageWrite32(QPAGE.SQ_TAIL, layout.sqSize + 1);
    await expectFault(ST.BAD_QUEUE_CONFIG, BigInt(layout.sqSize + 1));
    // ... and a CQ_HEAD ahead of CQ_TAIL (the client "consumed" completions never written): the device would
    // wait for ring space forever, so it is BAD_QUEUE_CONFIG at the next fetch, CQ_HEAD as the "iova" (a
    // choice, docs/SA-1.md: the datasheet says only that a full ring never stalls silently; a CQ_HEAD far
    // behind is back-pressure).
    await q.reset();
    q = new RawQueue(r.client, layout);
    await q.configure();
    await q.pageWrite32(QPAGE.CQ_HEAD, 100);
    await q.submit([{ opcode: OP.NOP, tag: 13n }]);
    await expectFault(ST.BAD_QUEUE_CONFIG, 100n);
    assert.equal(q.cqe(0).phase, 0, 'no completion written');
    // FAULT_HEAD at 0x40 and FAULT_ACK at 0x44 as one 64-bit read: nothing acknowledged yet.
    assert.equal(await r64(r.client, REGION.bar0, BAR0.FAULT_HEAD), BigInt(faults));
    await w32(r.client, REGION.bar0, BAR0.FAULT_ACK, faults);
    assert.equal((await r32(r.client, REGION.bar0, BAR0.STATUS)) & STATUS.FAULT_PENDING, 0);
  });
});

test('§8 slices: a queue page of BAR2 and a granule of BAR4 by feature 11; the client drives its mapped page', async () => {
  await withHost(async (r, host) => {
    const slice = async (region: number, offset: number, length: number) => {
      const req = Buffer.alloc(16 + 16);
      req.writeUInt32LE(region, 0);
      req.writeUInt32LE(0o2 | 0o2000000, 4); // O_RDWR | O_CLOEXEC
      req.writeUInt32LE(0, 8);
      req.writeUInt32LE(1, 12);
      req.writeBigUInt64LE(BigInt(offset), 16);
      req.writeBigUInt64LE(BigInt(length), 24);
      const reply = await r.client.feature({ flags: 1 << 16 /* GET */, feature: FEATURE.DMA_BUF, data: req });
      assert.equal(reply.fds.length, 1);
      return reply.fds[0]!;
    };
    const pageFd = await slice(REGION.bar2, 3 * CONFIG.queueStride, CONFIG.queueStride);
    const granuleFd = await slice(REGION.bar4, 2 * CONFIG.devmemGranule, CONFIG.devmemGranule);
    const page = Mapping.map(pageFd, { length: CONFIG.queueStride, guard: true });
    const granule = Mapping.map(granuleFd, { length: CONFIG.devmemGranule, guard: true });
    try {
      const q = new RawQueue(r.client, {
        q: 3,
        stride: CONFIG.queueStride,
        host,
        sqAt: 0x1_0000,
        sqSize: 2,
        cqAt: 0x1_1000,
        cqSize: 2,
        window: { base: HOST, size: BigInt(HOST_SIZE) },
        page: buf(page.u8),
      });
      await q.configure();
      await q.submit([{ opcode: OP.WRITE_IMM, dst: HOST + 0x9000n, imm: 0x5a01n, tag: 77n }]);
      const [c] = await q.reap(1);
      assert.deepEqual([c?.tag, c?.status, c?.phase], [77n, ST.OK, 1]);
      assert.equal(buf(host.view).readBigUInt64LE(0x9000), 0x5a01n);
      const p = buf(page.u8);
      // The device writes the CQE, then publishes SQ_HEAD and CQ_TAIL (the datasheet orders neither way for a
      // reader of both; docs/SA-1.md): a client that saw the phase flip may look at the page a moment before.
      await until(() => p.readUInt32LE(QPAGE.SQ_HEAD) === 1, 'SQ_HEAD 1 in the mapped page');
      await until(() => p.readUInt32LE(QPAGE.CQ_TAIL) === 1, 'CQ_TAIL 1 in the mapped page');
      assert.equal(p.readBigUInt64LE(QPAGE.SQ_BASE), HOST + 0x1_0000n);
      assert.equal(p.readBigUInt64LE(QPAGE.CQ_BASE), HOST + 0x1_1000n);
      assert.equal(p.readUInt32LE(QPAGE.SQ_SIZE), 2);
      assert.equal(p.readUInt32LE(QPAGE.CQ_SIZE), 2);
      // Q_NOTIFY (rev 2): b0 KICK_NEEDED is the only bit (set or not depends on whether the poller sleeps).
      assert.equal(p.readUInt32LE(QPAGE.Q_NOTIFY) & ~Q_NOTIFY.KICK_NEEDED, 0, 'Q_NOTIFY has no bit but b0');
      // One ioeventfd per queue page on region 2, at the page's SQ_TAIL, 4 bytes, no datamatch.
      const io = await r.client.regionIoFds(REGION.bar2);
      try {
        assert.equal(io.fds.length, CONFIG.numQueues, 'one ioeventfd per queue page');
        const at = BigInt(3 * CONFIG.queueStride + QPAGE.SQ_TAIL);
        const sub = io.subRegions.find((s) => s.offset === at);
        assert.ok(sub, `a sub-region at queue 3's SQ_TAIL (${at})`);
        assert.deepEqual([sub.size, sub.type, sub.flags], [4n, IO_FD_TYPE.IOEVENTFD, 0]);
        assert.ok(sub.fdIndex >= 0 && sub.fdIndex < io.fds.length, 'its fd index is in the reply');
      } finally {
        for (const fd of io.fds) fd.close();
      }

      buf(granule.u8).write('granule two', 0x40, 'latin1');
      const seen = await r.client.regionRead(REGION.bar4, 2 * CONFIG.devmemGranule + 0x40, 11);
      assert.equal(seen.toString('latin1'), 'granule two', 'the granule slice is BAR4 at 2·DEVMEM_GRANULE');
    } finally {
      page.unmap();
      granule.unmap();
      pageFd.close();
      granuleFd.close();
    }
  });
});
