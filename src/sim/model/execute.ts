// Running one decoded descriptor (datasheet §4): the operand checks (the queue's window, its device-memory
// window, the IOMMU through Q_XLAT), the data movement per opcode, and the check that the memory it touched
// was all there (rev 2 §7). This is the engine's decoded path; the engine (engine.ts) keeps the fetch, the
// fast paths (a plain NOP or COPY, fast-path.ts) and the completion writer, and calls in here per descriptor
// that is not one of those. The address helpers (translate, deadAt, windowFault, hostRanges) are shared
// with the engine's ring handling.

import {
  FLAG_DST_DEVMEM,
  FLAG_SRC_DEVMEM,
  FLAGS_DEFINED,
  MAX_LENGTH,
  OP_COPY,
  OP_CRC32C,
  OP_FILL,
  OP_NOP,
  OP_WRITE_IMM,
  ST_BAD_LENGTH,
  ST_BAD_OPCODE,
  ST_DEVMEM_VIOLATION,
  ST_IOMMU_FAULT,
  ST_OK,
  ST_WINDOW_VIOLATION,
} from './datasheet.js';
import type { Descriptor } from './descriptor.js';
import { fail, OK_NOP, type Outcome, ok, touchPages } from './fast-path.js';
import type { Iommu } from './iommu.js';
import { copySegments, crcSegments, type DeviceMemory, fillSegments, type Segments } from './memory.js';
import type { Queue } from './queue.js';

/** The memories a descriptor reaches: host memory through the IOMMU, and the device's own. */
export interface Memories {
  readonly iommu: Iommu;
  readonly devmem: DeviceMemory;
}

/**
 * Run a descriptor, then make sure the memory it touched was all there (rev 2 §7): when a guarded map was
 * revoked during the access (the backing shrank: the guard gave zeros) the descriptor completes as
 * IOMMU_FAULT at the first address in the shrunken map, never OK with zeros.
 */
export function executeChecked(m: Memories, q: Queue, d: Descriptor): Outcome {
  if (d.opcode === OP_NOP) return execute(m, q, d); // touches no memory: nothing can have shrunk under it
  m.iommu.sync(); // maps that shrank before this access fault in translate()
  const out = execute(m, q, d);
  if (out.status !== ST_OK) {
    m.iommu.dropWrites();
    return out;
  }
  // Memory without an fd: what the descriptor wrote goes to the owner now (its completion comes after).
  const unsent = flushRemote(m.iommu, q);
  if (unsent !== null) return fail(ST_IOMMU_FAULT, unsent);
  if (!m.iommu.sync()) return out;
  for (const r of hostRanges(d)) {
    const at = deadAt(m.iommu, q, r.start, r.length);
    if (at !== null) return fail(ST_IOMMU_FAULT, at);
  }
  return out;
}

function execute(m: Memories, q: Queue, d: Descriptor): Outcome {
  if (d.opcode > OP_WRITE_IMM || d.reserved0 !== 0 || !d.reservedZero || (d.flags & ~FLAGS_DEFINED) !== 0) {
    return fail(ST_BAD_OPCODE, 0n);
  }
  if (d.opcode === OP_NOP) return OK_NOP;
  if (d.opcode !== OP_WRITE_IMM && (d.length === 0 || d.length > MAX_LENGTH)) return fail(ST_BAD_LENGTH, 0n);

  let src: Segments = [];
  if (d.opcode === OP_COPY || d.opcode === OP_CRC32C) {
    const devmem = (d.flags & FLAG_SRC_DEVMEM) !== 0;
    const r = resolve(m, q, d.src, d.length, devmem, false);
    if (!Array.isArray(r)) return r;
    src = r;
    // Read one byte of every source page first: a source that shrank faults here (the guard swaps in zero
    // pages), so the descriptor fails before it writes anything, as a transfer stopped by an IOMMU fault.
    if (!devmem && touchPages(src) && m.iommu.sync()) {
      const at = deadAt(m.iommu, q, d.src, d.length);
      if (at !== null) return fail(ST_IOMMU_FAULT, at);
    }
  }
  let dst: Segments = [];
  if (d.opcode !== OP_CRC32C) {
    const len = d.opcode === OP_WRITE_IMM ? 8 : d.length;
    const r = resolve(m, q, d.dst, len, (d.flags & FLAG_DST_DEVMEM) !== 0, true);
    if (!Array.isArray(r)) return r;
    dst = r;
  }
  switch (d.opcode) {
    case OP_COPY:
      copySegments(src, dst);
      return ok(0, d.length);
    case OP_FILL:
      fillSegments(dst, le64(d.imm));
      return ok(0, d.length);
    case OP_CRC32C:
      return ok(crcSegments(src), d.length);
    default: // OP_WRITE_IMM
      copySegments([le64(d.imm)], dst);
      return ok(0, 8);
  }
}

/** Segments for a descriptor operand, or the failure (window, devmem window, IOMMU). */
function resolve(
  m: Memories,
  q: Queue,
  addr: bigint,
  length: number,
  devmem: boolean,
  write: boolean,
): Segments | Outcome {
  const len = BigInt(length);
  if (devmem) {
    const memEnd = BigInt(q.memBase) + BigInt(q.memSize);
    if (addr < BigInt(q.memBase) || addr + len > memEnd || !m.devmem.contains(Number(addr), length)) {
      return fail(ST_DEVMEM_VIOLATION, addr);
    }
    return m.devmem.segments(Number(addr), length);
  }
  const outside = windowFault(q, addr, length);
  if (outside !== null) return fail(ST_WINDOW_VIOLATION, outside);
  const segs: Segments = [];
  const fault = translate(m.iommu, q, addr, length, write, segs);
  if (fault !== null) return fail(ST_IOMMU_FAULT, fault);
  return segs;
}

/** The first address of [iova, +length) outside the queue's window, or null when inside. */
export function windowFault(q: Queue, iova: bigint, length: number): bigint | null {
  if (q.winSize === 0n || iova < q.winBase || iova >= q.winBase + q.winSize) return iova;
  const end = iova + BigInt(length);
  return end <= q.winBase + q.winSize ? null : q.winBase + q.winSize;
}

/**
 * Q_XLAT (§2.2, rev 2): the device accesses IOVA + Q_XLAT (mod 2^64) through the IOMMU. Returns null
 * when [iova, +length) is mapped (segments in `out`), else the faulting address as the queue saw it.
 */
export function translate(
  iommu: Iommu,
  q: Queue,
  iova: bigint,
  length: number,
  write: boolean,
  out: Segments,
  local = false,
): bigint | null {
  const xlat = q.xlat;
  const device = xlat === 0n ? iova : BigInt.asUintN(64, iova + xlat);
  const fault = iommu.translate(Number(device), length, write, out, local);
  if (fault < 0) return null;
  // The IOMMU works in JS numbers; the first byte's fault is given back exactly.
  const at = fault === Number(device) ? device : BigInt(fault);
  return xlat === 0n ? at : BigInt.asUintN(64, at - xlat);
}

/**
 * Send the writes made through maps without an fd (iommu.ts flush). Returns null, or the address, as the
 * queue saw it, where the owner did not take one.
 */
export function flushRemote(iommu: Iommu, q: Queue): bigint | null {
  const failed = iommu.flush();
  if (failed < 0) return null;
  return q.xlat === 0n ? BigInt(failed) : BigInt.asUintN(64, BigInt(failed) - q.xlat);
}

/**
 * The first address of [iova, +length), as the queue sees it (IOVA - Q_XLAT), in a map whose backing shrank;
 * null when none.
 */
export function deadAt(iommu: Iommu, q: Queue, iova: bigint, length: number): bigint | null {
  const xlat = q.xlat;
  const device = xlat === 0n ? iova : BigInt.asUintN(64, iova + xlat);
  const at = iommu.deadIn(Number(device), length);
  if (at < 0) return null;
  return xlat === 0n ? BigInt(at) : BigInt.asUintN(64, BigInt(at) - xlat);
}

function le64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}

/** The host-memory (IOVA) ranges a descriptor touches. */
export function hostRanges(d: Descriptor): { start: bigint; length: number }[] {
  const out: { start: bigint; length: number }[] = [];
  if ((d.opcode === OP_COPY || d.opcode === OP_CRC32C) && (d.flags & FLAG_SRC_DEVMEM) === 0) {
    out.push({ start: d.src, length: d.length });
  }
  if ((d.opcode === OP_COPY || d.opcode === OP_FILL) && (d.flags & FLAG_DST_DEVMEM) === 0) {
    out.push({ start: d.dst, length: d.length });
  }
  if (d.opcode === OP_WRITE_IMM && (d.flags & FLAG_DST_DEVMEM) === 0) out.push({ start: d.dst, length: 8 });
  return out;
}
