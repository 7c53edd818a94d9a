// The engine's hot paths (engine.ts): a NOP and a host-memory COPY that complete at once, checked and run
// from the fetched SQE's words. They answer exactly what the decoded path answers for the descriptors they
// take (no BigInt, no Descriptor object on the way) and decline everything else, which the decoded path then
// reports. Also the outcomes both paths complete with.

import { FLAG_INTR, FLAGS_DEFINED, MAX_LENGTH, OP_COPY, OP_NOP, ST_IOMMU_FAULT, ST_OK } from './datasheet.js';
import type { Iommu } from './iommu.js';
import type { Segments } from './memory.js';
import type { Queue } from './queue.js';

export interface Outcome {
  status: number;
  result: number;
  bytes: number;
  /** The IOVA or BAR4 offset that faulted, for statuses that write a fault record. */
  at: bigint;
}

export const ok = (result: number, bytes: number): Outcome => ({ status: ST_OK, result, bytes, at: 0n });
/** A NOP's outcome: outcomes are never mutated, so one object serves every NOP. */
export const OK_NOP: Outcome = Object.freeze(ok(0, 0));
export const fail = (status: number, at: bigint): Outcome => ({ status, result: 0, bytes: 0, at });

/**
 * A fetched SQE (as words) that #execute() would answer OK_NOP: opcode NOP, bytes 2..3 zero, only defined
 * flags, bytes 40..63 zero. Anything else takes the decoded path, which names what is wrong.
 */
export function isPlainNop(w: Int32Array): boolean {
  const w0 = w[0] as number;
  if ((w0 & 0xff) !== OP_NOP || w0 >>> 16 !== 0 || ((w0 >>> 8) & 0xff & ~FLAGS_DEFINED) !== 0) return false;
  return (w[10]! | w[11]! | w[12]! | w[13]! | w[14]! | w[15]!) === 0;
}

/**
 * The engine's #executeChecked() of a COPY between host memory, from the SQE's words, for the case it does not fail:
 * addresses below 2^53, a window and Q_XLAT the numbers hold exactly (Queue.plainWindow), both ranges inside the
 * window, each at IOVA + Q_XLAT inside one map with the access it needs. Returns null for anything else (the
 * engine decodes and runs the general path, which applies waiting map updates, finds and reports the failure
 * exactly as before); returns the IOMMU_FAULT a revocation during the access gives, as the general path does,
 * at the address as the queue saw it. No segment lists, no BigInt and, for a source used again, no view made:
 * the maps found are kept on the queue for its IOMMU generation.
 */
export function plainCopy(iommu: Iommu, q: Queue, w: Int32Array): Outcome | null {
  const w0 = w[0] as number;
  const flags = (w0 >>> 8) & 0xff;
  // FLAG_INTR alone (no devmem operand), bytes 2..3 and 40..63 zero, length 1..MAX_LENGTH.
  if ((w0 & 0xff) !== OP_COPY || w0 >>> 16 !== 0 || (flags & ~FLAG_INTR) !== 0) return null;
  if ((w[10]! | w[11]! | w[12]! | w[13]! | w[14]! | w[15]!) !== 0) return null;
  const length = (w[1] as number) >>> 0;
  if (length === 0 || length > MAX_LENGTH) return null;
  const srcHi = (w[3] as number) >>> 0;
  const dstHi = (w[5] as number) >>> 0;
  if (srcHi >= 0x20_0000 || dstHi >= 0x20_0000) return null; // 2^53: exact as numbers
  const win = q.plainWindow;
  if (win === null) return null;
  const viewSrc = ((w[2] as number) >>> 0) + srcHi * 2 ** 32;
  const viewDst = ((w[4] as number) >>> 0) + dstHi * 2 ** 32;
  if (viewSrc < win.base || viewSrc + length > win.end || viewDst < win.base || viewDst + length > win.end) {
    return null;
  }
  // Q_XLAT (§2.2): the device's IOVAs are view + Q_XLAT, exact (exactWindow bounds the window's end + Q_XLAT by
  // 2^53 − 1). A fault is reported at the address as the queue saw it, device − Q_XLAT.
  const xlat = win.xlat;
  const src = viewSrc + xlat;
  const dst = viewDst + xlat;
  iommu.sync(); // maps that shrank before this access fault: their generation is gone, find() refuses them
  if (q.copyGen !== iommu.generation) {
    q.forgetCopyMaps();
    q.copyGen = iommu.generation;
  }
  let from = q.copyFrom;
  if (from === null || src < from.iova || src + length > from.iova + from.size) {
    from = iommu.find(src, length, false);
    if (from === null) return null;
    q.copyFrom = from;
    q.copyFromView = null;
  }
  let to = q.copyTo;
  if (to === null || dst < to.iova || dst + length > to.iova + to.size) {
    to = iommu.find(dst, length, true);
    if (to === null) return null;
    q.copyTo = to;
  }
  const at = src - from.iova;
  // As #execute(): one byte of every source page first, so a shrunken source fails before any write.
  if (touchRange(from.view, at, length) && iommu.sync()) {
    const dead = iommu.deadIn(src, length);
    if (dead >= 0) return fail(ST_IOMMU_FAULT, BigInt(dead - xlat));
  }
  if (from === to) {
    to.view.copyWithin(dst - to.iova, at, at + length); // memmove, as set() within one segment
  } else {
    let view = q.copyFromView;
    if (view === null || q.copyFromAt !== at || view.length !== length) {
      view = from.view.subarray(at, at + length);
      q.copyFromView = view;
      q.copyFromAt = at;
    }
    to.view.set(view, dst - to.iova);
  }
  if (iommu.sync()) {
    const dead = iommu.deadIn(src, length); // the source first, as hostRanges() lists them
    const at2 = dead >= 0 ? dead : iommu.deadIn(dst, length);
    if (at2 >= 0) return fail(ST_IOMMU_FAULT, BigInt(at2 - xlat));
  }
  return ok(0, length);
}

/** Read a byte of every 4 KiB page of view[at, at+length) (and its last byte); returns true. */
function touchRange(view: Uint8Array, at: number, length: number): boolean {
  let x = view[at + length - 1] as number;
  for (let i = at; i < at + length; i += 4096) x ^= view[i] as number;
  return x >= 0;
}

/** Read a byte of every 4 KiB page of the segments (and each one's last byte); returns true. */
export function touchPages(segs: Segments): boolean {
  let x = 0;
  for (const s of segs) {
    for (let i = 0; i < s.length; i += 4096) x ^= s[i] as number;
    if (s.length) x ^= s[s.length - 1] as number;
  }
  return x >= 0;
}
