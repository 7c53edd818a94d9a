// What Sa1Queue submits and what it completes with: the descriptor fields a
// client sets and their SQE encoding, a completion as the device wrote it, and
// the error a non-OK completion rejects with.

import { DevleaseError } from '../errors.js';
import { DESC_FLAG, OPCODE, SQE_SIZE, type StatusName } from '../hw/sa1/regs.js';

export interface Descriptor {
  opcode: keyof typeof OPCODE;
  /** Ask for an interrupt when this one completes. */
  intr?: boolean;
  srcDevmem?: boolean;
  dstDevmem?: boolean;
  length?: number;
  src?: bigint;
  dst?: bigint;
  /** FILL pattern or WRITE_IMM value. */
  imm?: bigint;
}

export interface Completion {
  tag: bigint;
  /** The status by name; 'UNKNOWN' for a value the datasheet does not define (see `rawStatus`). */
  status: StatusName | 'UNKNOWN';
  /** The status as the device wrote it. */
  rawStatus: number;
  /** CRC32C for CRC32C descriptors, else 0. */
  result: number;
}

/**
 * A descriptor completed with a non-OK status. `code` is the status name (e.g. 'WINDOW_VIOLATION'), or
 * ERR_DEVLEASE_DEVICE_STATUS_UNKNOWN for a status the datasheet does not define — a device or firmware bug,
 * not the client's: its value is in `completion.rawStatus`.
 */
export class DeviceStatusError extends DevleaseError {
  declare readonly code: StatusName | 'ERR_DEVLEASE_DEVICE_STATUS_UNKNOWN';
  readonly completion: Completion;
  constructor(c: Completion) {
    const raw = `0x${c.rawStatus.toString(16)}`;
    super(
      c.status === 'UNKNOWN' ? 'ERR_DEVLEASE_DEVICE_STATUS_UNKNOWN' : c.status,
      c.status === 'UNKNOWN'
        ? `descriptor ${c.tag} completed with status ${raw}, which the SA-1 datasheet does not define (a device bug)`
        : `descriptor ${c.tag} completed with ${c.status}`,
    );
    this.name = 'DeviceStatusError';
    this.completion = c;
  }
}

/** Write descriptor `d` into SQ slot `slot` of the ring's words `w` (datasheet §3), with tag (tagHi:tag). */
export function writeSqe(
  w: Uint32Array,
  slot: number,
  d: Descriptor,
  tag: number,
  lastOfBatch: boolean,
  tagHi = Math.floor(tag / 2 ** 32),
): void {
  const o = slot * (SQE_SIZE / 4);
  const flags =
    ((d.intr ?? lastOfBatch) ? DESC_FLAG.INTR : 0) |
    (d.srcDevmem ? DESC_FLAG.SRC_DEVMEM : 0) |
    (d.dstDevmem ? DESC_FLAG.DST_DEVMEM : 0);
  // Little-endian words (datasheet §3; Uint32Array is host order, little-endian on every host we run on).
  w[o] = OPCODE[d.opcode] | (flags << 8); // bytes 2..3 reserved, 0
  w[o + 1] = d.length ?? 0;
  // An absent field is two stores here, not a call: after an idle pause a submit runs cold and interpreted,
  // where each call costs (issue 16, tenth pass).
  if (d.src === undefined) w[o + 2] = w[o + 3] = 0;
  else putU64(w, o + 2, d.src);
  if (d.dst === undefined) w[o + 4] = w[o + 5] = 0;
  else putU64(w, o + 4, d.dst);
  if (d.imm === undefined) w[o + 6] = w[o + 7] = 0;
  else putU64(w, o + 6, d.imm);
  w[o + 8] = tag >>> 0;
  w[o + 9] = tagHi;
  // Bytes 40..63 reserved, 0: six stores (a fill() call is a builtin's code to fetch, cold, per submit).
  w[o + 10] = 0;
  w[o + 11] = 0;
  w[o + 12] = 0;
  w[o + 13] = 0;
  w[o + 14] = 0;
  w[o + 15] = 0;
}

const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER);

/** A 64-bit descriptor field as two little-endian words (none: 0). */
function putU64(w: Uint32Array, at: number, v: bigint | undefined): void {
  if (v === undefined || v === 0n) {
    w[at] = 0;
    w[at + 1] = 0;
    return;
  }
  if (v > 0n && v <= MAX_EXACT) {
    // Every IOVA a lease hands out: exact as a number, split without making three BigInts per field.
    const n = Number(v);
    w[at] = n >>> 0;
    w[at + 1] = Math.floor(n / 2 ** 32);
    return;
  }
  const u = BigInt.asUintN(64, v);
  w[at] = Number(u & 0xffff_ffffn);
  w[at + 1] = Number(u >> 32n);
}
