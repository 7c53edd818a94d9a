// What Sa1Queue submits and what it completes with: the descriptor fields a
// client sets, a completion as the device wrote it, and the error a non-OK
// completion rejects with.

import { DevleaseError } from '../errors.js';
import type { OPCODE, StatusName } from '../hw/sa1/regs.js';

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
