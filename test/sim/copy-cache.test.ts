// A plain COPY keeps the maps its source and destination were found in on the queue, for the IOMMU's
// generation (fast-path.ts): once a map is unmapped, or replaced by another at the same IOVA, the next COPY
// must see the table as it is now — fault where nothing is mapped or the access is not allowed, move the
// bytes of the new memory — and never read or write the memory the old map showed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { decodeFaultRecord } from '../../src/sim/model/faults.js';
import { BAR0, type HostMem, qcfg, r32, type TestQueue } from './helpers/driver.js';
import { type Booted, booted, HOST_IOVA, queue } from './helpers/scenario.js';

const SRC = 0x90_0000n;
const DST = 0xa0_0000n;
const LEN = 4096;

/** A booted device, queue 0 with a window over host memory and both data maps, one COPY SRC → DST done. */
async function afterOneCopy(): Promise<{ p: Booted; tq: TestQueue; src: HostMem; dst: HostMem }> {
  const p = await booted();
  const src = p.map(SRC, 2 * LEN);
  const dst = p.map(DST, 2 * LEN);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  src.view.fill(0x11);
  await copy(tq, SRC, DST, 1n);
  assert.ok(
    dst.view.subarray(0, LEN).every((b) => b === 0x11),
    'the first COPY moved the bytes',
  );
  return { p, tq, src, dst };
}

async function copy(tq: TestQueue, src: bigint, dst: bigint, tag: bigint): Promise<number> {
  await tq.submit([{ opcode: ds.OP_COPY, length: LEN, src, dst, tag }]);
  const [c] = await tq.reap(1);
  assert.equal(c?.tag, tag);
  return c?.status ?? -1;
}

async function faultedAt(p: Booted): Promise<bigint> {
  const st = await r32(p.bus, BAR0, qcfg(0, ds.Q_STATUS));
  assert.equal(st >> ds.Q_STATUS_ERROR_SHIFT, ds.ST_IOMMU_FAULT, 'queue 0 in ERROR with IOMMU_FAULT');
  const head = await r32(p.bus, BAR0, ds.REG_FAULT_HEAD);
  const bytes = new Uint8Array(256);
  for (let i = 0; i < 64; i++) bytes.set(await p.bus.read(BAR0, ds.REG_FAULT_LOG + 4 * i, 4), 4 * i);
  const rec = decodeFaultRecord(bytes, (head - 1) % 16);
  assert.deepEqual([rec.queue, rec.code], [0, ds.ST_IOMMU_FAULT]);
  return rec.iova;
}

test('a destination unmapped after a COPY ran: the next COPY to it is IOMMU_FAULT, the old memory untouched', async () => {
  const { p, tq, src, dst } = await afterOneCopy();
  dst.view.fill(0);
  src.view.fill(0x22);
  p.dev.dmaUnmap(Number(DST), 2 * LEN);
  assert.equal(await copy(tq, SRC, DST, 2n), ds.ST_IOMMU_FAULT);
  assert.equal(await faultedAt(p), DST);
  assert.ok(
    dst.view.every((b) => b === 0),
    'nothing written through the unmapped map',
  );
});

test('a source unmapped after a COPY ran: the next COPY from it is IOMMU_FAULT, nothing written', async () => {
  const { p, tq, dst } = await afterOneCopy();
  dst.view.fill(0);
  p.dev.dmaUnmap(Number(SRC), 2 * LEN);
  assert.equal(await copy(tq, SRC, DST, 2n), ds.ST_IOMMU_FAULT);
  assert.equal(await faultedAt(p), SRC);
  assert.ok(
    dst.view.every((b) => b === 0),
    'nothing read from the unmapped map',
  );
});

test('maps replaced at the same IOVAs: the next COPY reads and writes the new memory only', async () => {
  const { p, tq, src, dst } = await afterOneCopy();
  dst.view.fill(0);
  p.dev.dmaUnmap(Number(SRC), 2 * LEN);
  p.dev.dmaUnmap(Number(DST), 2 * LEN);
  const src2 = p.map(SRC, 2 * LEN);
  const dst2 = p.map(DST, 2 * LEN);
  src2.view.fill(0x33);
  src.view.fill(0x44); // the old source: its bytes must not arrive
  assert.equal(await copy(tq, SRC, DST, 2n), ds.ST_OK);
  assert.ok(
    dst2.view.subarray(0, LEN).every((b) => b === 0x33),
    'the new source, into the new destination',
  );
  assert.ok(
    dst.view.every((b) => b === 0),
    'the old destination untouched',
  );
});

test('a destination replaced by a read-only map at the same IOVA: the next COPY is IOMMU_FAULT', async () => {
  const { p, tq } = await afterOneCopy();
  p.dev.dmaUnmap(Number(DST), 2 * LEN);
  const ro = p.map(DST, 2 * LEN, { read: true, write: false });
  assert.equal(await copy(tq, SRC, DST, 2n), ds.ST_IOMMU_FAULT);
  assert.equal(await faultedAt(p), DST);
  assert.ok(
    ro.view.every((b) => b === 0),
    'nothing written into the read-only map',
  );
});

test('a COPY within one map (source and destination in the same map) moves the bytes, overlapping like memmove', async () => {
  const { tq, src } = await afterOneCopy();
  for (let i = 0; i < 2 * LEN; i++) src.view[i] = i & 0xff;
  const before = src.view.slice(0, LEN);
  assert.equal(await copy(tq, SRC, SRC + 16n, 2n), ds.ST_OK);
  assert.deepEqual(src.view.subarray(16, 16 + LEN), before);
});

test('two COPYs from one source map at different offsets each move their own bytes', async () => {
  const { tq, src, dst } = await afterOneCopy();
  src.view.subarray(LEN).fill(0x55);
  assert.equal(await copy(tq, SRC + BigInt(LEN), DST, 2n), ds.ST_OK);
  assert.ok(
    dst.view.subarray(0, LEN).every((b) => b === 0x55),
    'the second offset, not the first',
  );
});

test('a source or destination running past its map end, after a cached COPY: IOMMU_FAULT, nothing written', async () => {
  for (const side of ['src', 'dst'] as const) {
    const { tq, dst } = await afterOneCopy();
    dst.view.fill(0);
    const past = BigInt(LEN + 16); // the last LEN bytes of the range cross the map's end by 16
    const [from, to] = side === 'src' ? [SRC + past, DST] : [SRC, DST + past];
    assert.equal(await copy(tq, from, to, 2n), ds.ST_IOMMU_FAULT, `${side} past its map's end`);
    assert.ok(
      dst.view.every((b) => b === 0),
      `${side}: nothing written`,
    );
  }
});

test('a COPY from a write-only map is IOMMU_FAULT, the destination untouched', async () => {
  const { p, tq, dst } = await afterOneCopy();
  const WO = 0xb0_0000n;
  const wo = p.map(WO, LEN, { read: false, write: true });
  wo.view.fill(0x66);
  dst.view.fill(0);
  assert.equal(await copy(tq, WO, DST, 2n), ds.ST_IOMMU_FAULT);
  assert.equal(await faultedAt(p), WO);
  assert.ok(
    dst.view.every((b) => b === 0),
    'nothing read from the write-only map',
  );
});
