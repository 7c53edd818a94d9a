// DMA to memory shorter than its map (datasheet rev 2 §7), on the bare
// simulator: a map whose fd does not cover [offset, offset + size) at map
// time is refused with EINVAL (a 4 KiB memfd mapped as 1 MiB, a 0-byte
// memfd, an offset past EOF); an fd that is no memory (a pipe, a socket) is
// EBADF, never EIO, and costs no log line with a stack trace; a backing that
// shrinks later makes the access complete as IOMMU_FAULT (fault record, queue
// in ERROR), never OK with zeros — before the descriptor is fetched, and
// while it is in flight — and a completion ring that shrinks is never
// written as if it were there.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { type Fd, MemFd, native } from '../../src/sys/index.js';
import { pipeSync } from '../fixtures/broker/pipe.js';
import { BAR0, boot, qcfg, r32, r64, TestQueue, w64 } from './helpers/driver.js';
import { lastFault } from './helpers/fault-log.js';
import { openFds, type Rig, rig, until } from './helpers/real.js';

const FW = 0x10_0000n;
const HOST = 0x20_0000n;
const VICTIM = 0x80_0000n;
const STRIDE = 65536;
const RW = 3;

async function bootedRig(log: string[]): Promise<Rig & { host: Awaited<ReturnType<Rig['map']>> }> {
  const r = await rig({ log: (line: string) => log.push(line) });
  const fw = await r.map(FW, 64 * 1024);
  await boot(r.bus, fw);
  return { ...r, host: await r.map(HOST, 1 << 20) };
}

/** Queue q (0 unless said) with its rings in host memory and a window over host and victim memory. */
async function queue0(r: Rig & { host: { view: Uint8Array } }, q = 0): Promise<TestQueue> {
  const tq = new TestQueue(
    r.bus,
    {
      q,
      mem: { iova: HOST + BigInt(q * 0x1000), view: r.host.view.subarray(q * 0x1000, (q + 1) * 0x1000) },
      sqSize: 8,
      cqSize: 8,
      window: { base: HOST, size: 0x100_0000n },
    },
    STRIDE,
  );
  await tq.configure();
  return tq;
}

/** Queue 0 copied from a map at VICTIM once (OK); then the map's memfd is truncated under the device. */
async function copiedThenTruncated(r: Rig & { host: { view: Uint8Array } }): Promise<TestQueue> {
  const victim = await r.map(VICTIM, 0x1_0000);
  victim.view.fill(0xab);
  const tq = await queue0(r);
  await tq.submit([{ opcode: ds.OP_COPY, length: 64, src: VICTIM, dst: HOST + 0x8000n, tag: 1n }]);
  assert.deepEqual(
    (await tq.reap(1)).map((c) => c.status),
    [ds.ST_OK],
  );
  victim.mapping.unmap(); // our own view would fault too
  victim.memfd.truncate(0);
  return tq;
}

async function assertQueueFaulted(r: Rig, at: bigint): Promise<void> {
  const rec = await lastFault(r);
  assert.deepEqual(
    rec,
    { queue: 0, code: ds.ST_IOMMU_FAULT, iova: at },
    'an IOMMU_FAULT record at the address',
  );
  const st = await r32(r.bus, BAR0, qcfg(0, ds.Q_STATUS));
  assert.equal(st & ds.Q_STATUS_ERROR, ds.Q_STATUS_ERROR, 'queue 0 in ERROR');
  assert.equal(st >> ds.Q_STATUS_ERROR_SHIFT, ds.ST_IOMMU_FAULT);
}

test('DMA_MAP of memory shorter than the map is EINVAL; a pipe or socket is EBADF; no stack trace logged', async () => {
  const before = openFds();
  const log: string[] = [];
  const r = await bootedRig(log);
  try {
    const map = (fd: Fd | number, size: number, offset = 0) =>
      r.client.dmaMap({ fd, iova: VICTIM, size, offset: BigInt(offset), flags: RW }).then(
        () => assert.fail('mapped'),
        (e: Error & { code?: string }) => e,
      );
    {
      using small = MemFd.create('small', { size: 4096 });
      const e = await map(small.fd, 1 << 20);
      assert.equal(e.code, 'EINVAL', `4 KiB memfd mapped as 1 MiB: ${e.message}`);
    }
    {
      using empty = MemFd.create('empty', { size: 0 });
      const e = await map(empty.fd, 4096);
      assert.equal(e.code, 'EINVAL', `0-byte memfd: ${e.message}`);
    }
    {
      using m = MemFd.create('m', { size: 8192 });
      const e = await map(m.fd, 4096, 16384);
      assert.equal(e.code, 'EINVAL', `offset past EOF: ${e.message}`);
    }
    const [rd, wr] = pipeSync();
    const [s1, s2] = native.unixPair(true);
    try {
      for (let i = 0; i < 20; i++) {
        const p = await map(rd, 4096);
        assert.equal(p.code, 'EBADF', `a pipe: ${p.message}`);
        const s = await map(s1, 4096);
        assert.equal(s.code, 'EBADF', `a socket: ${s.message}`);
      }
    } finally {
      rd.close();
      wr.close();
      native.close(s1);
      native.close(s2);
    }
    assert.equal((await r.sim.stats()).dmaMaps, 2, 'only the firmware and host maps');
    assert.ok(log.length <= 10, `at most a few rate-limited lines for 40 refused maps, got ${log.length}`);
    assert.ok(!log.some((l) => /\n\s+at /.test(l)), `no stack trace in the log: ${log.join('\n')}`);
    // The connection keeps working.
    using ok = MemFd.create('ok', { size: 4096 });
    await r.client.dmaMap({ fd: ok.fd, iova: VICTIM, size: 4096, flags: RW });
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('a source truncated under the device: COPY completes as IOMMU_FAULT, fault record, queue in ERROR', async () => {
  const before = openFds();
  const r = await bootedRig([]);
  try {
    const tq = await copiedThenTruncated(r);
    r.host.view.fill(0x11, 0x9000, 0x9000 + 64);
    await tq.submit([{ opcode: ds.OP_COPY, length: 64, src: VICTIM + 0x100n, dst: HOST + 0x9000n, tag: 2n }]);
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [2n, ds.ST_IOMMU_FAULT], 'never OK with zeros');
    await assertQueueFaulted(r, VICTIM + 0x100n);
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before);
});

test('a source another queue found truncated: a COPY from the map this queue copied from before is IOMMU_FAULT', async () => {
  const r = await bootedRig([]);
  try {
    const tq = await copiedThenTruncated(r);
    // Queue 1's access finds the backing gone (the guard counts the revocation there), before queue 0 looks.
    const other = await queue0(r, 1);
    await other.submit([{ opcode: ds.OP_COPY, length: 64, src: VICTIM, dst: HOST + 0xa000n, tag: 2n }]);
    assert.deepEqual(
      (await other.reap(1)).map((c) => c.status),
      [ds.ST_IOMMU_FAULT],
    );
    r.host.view.fill(0x11, 0x9000, 0x9000 + 64);
    await tq.submit([{ opcode: ds.OP_COPY, length: 64, src: VICTIM + 0x100n, dst: HOST + 0x9000n, tag: 3n }]);
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [3n, ds.ST_IOMMU_FAULT], 'never OK with zeros');
    await assertQueueFaulted(r, VICTIM + 0x100n);
    assert.ok(
      r.host.view.subarray(0x9000, 0x9000 + 64).every((b) => b === 0x11),
      'the destination untouched',
    );
  } finally {
    await r.close();
  }
});

test('a destination shrunk to 4 KiB: a COPY past the new end is IOMMU_FAULT, and so is every later access to that map', async () => {
  const r = await bootedRig([]);
  try {
    const victim = await r.map(VICTIM, 0x1_0000);
    victim.mapping.unmap();
    victim.memfd.truncate(4096);
    const tq = await queue0(r);
    await tq.submit([{ opcode: ds.OP_FILL, length: 64, dst: VICTIM + 0x2000n, imm: 1n, tag: 1n }]);
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [1n, ds.ST_IOMMU_FAULT]);
    await assertQueueFaulted(r, VICTIM + 0x2000n);
    // The whole map is dead now (its pages were replaced by the guard): documented in docs/SA-1.md.
    await r.bus.write(BAR0, qcfg(0, ds.Q_CTRL), new Uint8Array([ds.Q_CTRL_RESET, 0, 0, 0]));
    await until(
      async () => ((await r32(r.bus, BAR0, qcfg(0, ds.Q_CTRL))) & ds.Q_CTRL_RESET) === 0,
      'queue reset',
    );
    r.host.view.fill(0, 0, 0x1000); // fresh rings: no stale completion from before the reset
    const tq2 = await queue0(r);
    await tq2.submit([{ opcode: ds.OP_COPY, length: 16, src: VICTIM, dst: HOST + 0x8000n, tag: 2n }]);
    const [c2] = await tq2.reap(1);
    assert.deepEqual([c2?.tag, c2?.status], [2n, ds.ST_IOMMU_FAULT]);
  } finally {
    await r.close();
  }
});

test('a source truncated while its descriptor is in flight completes as IOMMU_FAULT', async () => {
  const r = await bootedRig([]);
  try {
    const victim = await r.map(VICTIM, 0x1_0000);
    victim.view.fill(0xcd);
    const tq = await queue0(r);
    r.sim.setDescriptorDelay(300, 0);
    await tq.submit([{ opcode: ds.OP_CRC32C, length: 4096, src: VICTIM + 0x4000n, tag: 7n }]);
    await until(async () => (await r32(r.bus, BAR0, qcfg(0, ds.Q_INFLIGHT))) === 1, 'descriptor in flight');
    victim.mapping.unmap();
    victim.memfd.truncate(0);
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [7n, ds.ST_IOMMU_FAULT]);
    await assertQueueFaulted(r, VICTIM + 0x4000n);
  } finally {
    await r.close();
  }
});

test('a translated queue (Q_XLAT): COPY moves the memory at IOVA + Q_XLAT; a source truncated under it faults at the address the queue saw', async () => {
  const before = openFds();
  const r = await bootedRig([]);
  try {
    // The holder sees the device's addresses XLAT lower (a lease's translated view): HOST at HOST - XLAT.
    const XLAT = 0x10_0000n;
    const victim = await r.map(VICTIM, 0x1_0000);
    victim.view.fill(0xab);
    await w64(r.bus, BAR0, qcfg(0, ds.Q_XLAT), XLAT);
    const tq = new TestQueue(
      r.bus,
      {
        q: 0,
        mem: { iova: HOST - XLAT, view: r.host.view.subarray(0, 0x1000) },
        sqSize: 8,
        cqSize: 8,
        window: { base: HOST - XLAT, size: 0x100_0000n },
      },
      STRIDE,
    );
    await tq.configure();
    await tq.submit([
      { opcode: ds.OP_COPY, length: 64, src: VICTIM - XLAT, dst: HOST - XLAT + 0x8000n, tag: 1n },
    ]);
    assert.deepEqual(
      (await tq.reap(1)).map((c) => c.status),
      [ds.ST_OK],
    );
    assert.ok(
      r.host.view.subarray(0x8000, 0x8000 + 64).every((b) => b === 0xab),
      'the bytes at VICTIM arrived at HOST + 0x8000',
    );
    victim.mapping.unmap();
    victim.memfd.truncate(0);
    r.host.view.fill(0x11, 0x9000, 0x9000 + 64);
    await tq.submit([
      { opcode: ds.OP_COPY, length: 64, src: VICTIM - XLAT + 0x100n, dst: HOST - XLAT + 0x9000n, tag: 2n },
    ]);
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [2n, ds.ST_IOMMU_FAULT], 'never OK with zeros');
    await assertQueueFaulted(r, VICTIM - XLAT + 0x100n);
    assert.ok(
      r.host.view.subarray(0x9000, 0x9000 + 64).every((b) => b === 0x11),
      'the destination untouched',
    );
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before);
});

test('a completion ring truncated under the device: IOMMU_FAULT at the CQ slot, CQ_TAIL not advanced, never reported as written', async () => {
  const before = openFds();
  const r = await bootedRig([]);
  try {
    // Both rings in one two-page map: the SQ (64 entries) fills the first page, the CQ is the second.
    const rings = await r.map(VICTIM, 0x2000);
    const tq = new TestQueue(
      r.bus,
      {
        q: 0,
        mem: { iova: VICTIM, view: rings.view },
        sqSize: 64,
        cqSize: 8,
        window: { base: HOST, size: 0x100_0000n },
      },
      STRIDE,
    );
    await tq.configure();
    await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
    assert.deepEqual(
      (await tq.reap(1)).map((c) => c.status),
      [ds.ST_OK],
      'the rings work (and the device has cached them)',
    );
    // The next entry goes into the SQ page before the shrink; from then on this test never touches the CQ
    // page through its own mapping (past the end now, it would fault here too).
    await tq.submit([{ opcode: ds.OP_NOP, tag: 2n }], false);
    rings.memfd.truncate(0x1000);
    await tq.ring();
    await until(async () => (await tq.pageRead32(ds.QP_SQ_HEAD)) === 2, 'the second entry fetched');
    assert.equal(await tq.pageRead32(ds.QP_CQ_TAIL), 1, 'CQ_TAIL not advanced past the lost completion');
    assert.equal(await r32(r.bus, BAR0, ds.REG_FAULT_HEAD), 1, 'one fault record');
    await assertQueueFaulted(r, VICTIM + 0x1000n + BigInt(ds.CQ_ENTRY_SIZE));
    assert.equal(await r64(r.bus, BAR0, qcfg(0, ds.Q_COMPLETED)), 1n, 'Q_COMPLETED counts only the first');
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before);
});
