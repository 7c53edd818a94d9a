// Submission and completion entries (datasheet §3), decoded from and encoded
// into ring memory. Also used by tests and by the client's queue helper to
// build descriptors.

import { CQ_ENTRY_SIZE, SQ_ENTRY_SIZE } from './datasheet.js';

export interface Descriptor {
  opcode: number;
  flags: number;
  /** Bytes 2..3, must be 0. */
  reserved0: number;
  length: number;
  src: bigint;
  dst: bigint;
  /** FILL pattern or WRITE_IMM value: the 8 bytes as stored (little-endian). */
  imm: bigint;
  tag: bigint;
  /** True when bytes 40..63 are all 0. */
  reservedZero: boolean;
}

/** `dv`: a view of the same 64 bytes the caller keeps (the engine's fetch scratch), to spare one per fetch. */
export function decodeDescriptor(
  entry: Uint8Array,
  dv = new DataView(entry.buffer, entry.byteOffset, SQ_ENTRY_SIZE),
): Descriptor {
  let reservedZero = true;
  for (let i = 40; i < SQ_ENTRY_SIZE; i += 4) {
    if (dv.getUint32(i, true) !== 0) reservedZero = false;
  }
  return {
    opcode: dv.getUint8(0),
    flags: dv.getUint8(1),
    reserved0: dv.getUint16(2, true),
    length: dv.getUint32(4, true),
    src: dv.getBigUint64(8, true),
    dst: dv.getBigUint64(16, true),
    imm: dv.getBigUint64(24, true),
    tag: dv.getBigUint64(32, true),
    reservedZero,
  };
}

export interface DescriptorInit {
  opcode: number;
  flags?: number;
  length?: number;
  src?: bigint;
  dst?: bigint;
  imm?: bigint;
  tag?: bigint;
}

/** Encode a descriptor into 64 bytes (a fresh buffer, or `out` at `offset`); reserved bytes are 0. */
export function encodeDescriptor(d: DescriptorInit, out?: Uint8Array, offset = 0): Uint8Array {
  const buf = out ?? new Uint8Array(SQ_ENTRY_SIZE);
  buf.fill(0, offset, offset + SQ_ENTRY_SIZE);
  const dv = new DataView(buf.buffer, buf.byteOffset + offset, SQ_ENTRY_SIZE);
  dv.setUint8(0, d.opcode);
  dv.setUint8(1, d.flags ?? 0);
  dv.setUint32(4, d.length ?? 0, true);
  dv.setBigUint64(8, d.src ?? 0n, true);
  dv.setBigUint64(16, d.dst ?? 0n, true);
  dv.setBigUint64(24, d.imm ?? 0n, true);
  dv.setBigUint64(32, d.tag ?? 0n, true);
  return buf;
}

export interface Completion {
  tag: bigint;
  result: number;
  status: number;
  phase: number;
}

export function decodeCompletion(entry: Uint8Array, offset = 0): Completion {
  const dv = new DataView(entry.buffer, entry.byteOffset + offset, CQ_ENTRY_SIZE);
  return {
    tag: dv.getBigUint64(0, true),
    result: dv.getUint32(8, true),
    status: dv.getUint16(12, true),
    phase: dv.getUint16(14, true) & 1,
  };
}

/**
 * Write a completion into a 16-byte CQ slot. Tag and result first, then the
 * status+phase word with one atomic 32-bit store, so a consumer polling the
 * phase bit never sees a half-written entry.
 */
export function writeCompletion(
  slot: Uint8Array,
  tag: bigint,
  result: number,
  status: number,
  phase: number,
): void {
  const dv = new DataView(slot.buffer, slot.byteOffset, CQ_ENTRY_SIZE);
  dv.setBigUint64(0, tag, true);
  dv.setUint32(8, result >>> 0, true);
  const word = (status & 0xffff) | ((phase & 1) << 16);
  if (slot.byteOffset % 4 === 0) {
    Atomics.store(new Int32Array(slot.buffer, slot.byteOffset + 12, 1), 0, word | 0);
  } else {
    dv.setUint32(12, word, true);
  }
}
