// The engine's fast COPY (fast-path.ts) against the decoded path it stands in for (execute.ts), on the same queue,
// IOMMU and memory: every COPY it takes must end exactly as executeChecked() ends it (status, result, fault address,
// the bytes written), and it must take a plain in-window COPY on a translated queue (Q_XLAT, datasheet §2.2),
// which is what every broker lease with the default iova_view runs. What it declines is left to the decoded path.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { decodeDescriptor, encodeDescriptor } from '../../src/sim/model/descriptor.js';
import { executeChecked } from '../../src/sim/model/execute.js';
import { type Outcome, plainCopy } from '../../src/sim/model/fast-path.js';
import { BAR0, qcfg, w32, w64 } from './helpers/driver.js';
import { type Booted, booted } from './helpers/scenario.js';

/** The holder's view of the device's addresses is XLAT lower. */
const XLAT = 0x40_0000n;
const DEVICE = 0x80_0000n; // where the data maps are, for the device
const VIEW = DEVICE - XLAT;
const MAPPED = 0x2_0000;
const WINDOW = { base: VIEW, size: 0x1_0000n }; // ends inside the mapped range (the map runs past it)
const Q = 1;

async function translatedQueue(p: Booted, xlat: bigint, window = WINDOW): Promise<void> {
  await w64(p.bus, BAR0, qcfg(Q, ds.Q_XLAT), xlat);
  await w64(p.bus, BAR0, qcfg(Q, ds.Q_WIN_BASE), window.base);
  await w64(p.bus, BAR0, qcfg(Q, ds.Q_WIN_SIZE), window.size);
  await w32(p.bus, BAR0, qcfg(Q, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
}

type Run = { out: Outcome | null; bytes: Uint8Array };

/** Run `d` on queue Q by one path, from the same starting memory each time; returns the outcome and memory after. */
function run(p: Booted, mem: Uint8Array, d: Parameters<typeof encodeDescriptor>[0], fast: boolean): Run {
  for (let i = 0; i < mem.length; i++) mem[i] = i % 251;
  const words = encodeDescriptor(d);
  const q = p.dev.queues[Q]!;
  const out = fast
    ? plainCopy(p.dev.iommu, q, new Int32Array(words.buffer, words.byteOffset, 16))
    : executeChecked({ iommu: p.dev.iommu, devmem: p.dev.devmem }, q, decodeDescriptor(words));
  return { out, bytes: mem.slice() };
}

test('a translated queue: the fast COPY takes every plain in-window COPY and ends it as the decoded path does', async () => {
  const p = await booted();
  const mem = p.map(DEVICE, MAPPED).view;
  await translatedQueue(p, XLAT);
  const cases: [string, bigint, bigint, number][] = [
    ['inside', VIEW + 0x100n, VIEW + 0x4000n, 4096],
    ['overlapping, within one map (memmove)', VIEW + 0x100n, VIEW + 0x180n, 512],
    ['ending at the window end', VIEW, VIEW + WINDOW.size - 64n, 64],
  ];
  for (const [what, src, dst, length] of cases) {
    const d = { opcode: ds.OP_COPY, length, src, dst, tag: 1n };
    const fast = run(p, mem, d, true);
    const decoded = run(p, mem, d, false);
    assert.notEqual(fast.out, null, `${what}: the fast path takes it`);
    assert.deepEqual(fast.out, decoded.out, `${what}: the same outcome`);
    assert.ok(Buffer.from(fast.bytes).equals(Buffer.from(decoded.bytes)), `${what}: the same bytes written`);
    assert.equal(decoded.out?.status, ds.ST_OK, `${what}: OK`);
  }
  // Past the window's end by one byte: declined, and the decoded path reports the violation at the window end.
  const past = { opcode: ds.OP_COPY, length: 64, src: VIEW, dst: VIEW + WINDOW.size - 63n, tag: 2n };
  assert.equal(run(p, mem, past, true).out, null, 'one byte past the window: declined');
  assert.deepEqual(run(p, mem, past, false).out, {
    status: ds.ST_WINDOW_VIOLATION,
    result: 0,
    bytes: 0,
    at: VIEW + WINDOW.size,
  });
});

test('a Q_XLAT that wraps (2^64 − x), or a translated end at or above 2^53: the fast COPY declines, the decoded path runs it', async () => {
  const p = await booted();
  const mem = p.map(DEVICE, MAPPED).view;
  // The holder's view above the device's addresses: VIEW2 + xlat = DEVICE mod 2^64.
  const VIEW2 = DEVICE + 0x1000_0000n;
  await translatedQueue(p, BigInt.asUintN(64, DEVICE - VIEW2), { base: VIEW2, size: 0x1_0000n });
  const d = { opcode: ds.OP_COPY, length: 256, src: VIEW2, dst: VIEW2 + 0x1000n, tag: 1n };
  assert.equal(run(p, mem, d, true).out, null, 'a wrapping Q_XLAT: declined');
  assert.equal(run(p, mem, d, false).out?.status, ds.ST_OK, 'the decoded path translates it mod 2^64');

  const max = BigInt(Number.MAX_SAFE_INTEGER);
  const q = p.dev.queues[Q]!;
  for (const [end, exact] of [
    [max, true],
    [max + 1n, false],
  ] as const) {
    await w32(p.bus, BAR0, qcfg(Q, ds.Q_CTRL), 0);
    // A window [0x1000, 0x2000) and a Q_XLAT that puts its translated end at `end`.
    await translatedQueue(p, end - 0x2000n, { base: 0x1000n, size: 0x1000n });
    assert.equal(
      q.plainWindow !== null,
      exact,
      `a translated end of ${end}: ${exact ? 'taken' : 'declined'}`,
    );
  }
});
