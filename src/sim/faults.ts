// The fault log (datasheet §2.1 FAULT_HEAD/FAULT_ACK/FAULT_LOG, §5): a ring
// of 16 records of 16 bytes indexed by the running count mod 16. Writing a
// record raises the fault vector; the device wires that up (onRecord).

import { FAULT_LOG_ENTRIES, FAULT_RECORD_SIZE } from './datasheet.js';

export interface FaultRecord {
  queue: number;
  code: number;
  iova: bigint;
}

export class FaultLog {
  /** FAULT_HEAD: records ever written, mod 2^32. */
  head = 0;
  /** FAULT_ACK: what the owner says it consumed. */
  ack = 0;
  readonly bytes = new Uint8Array(FAULT_LOG_ENTRIES * FAULT_RECORD_SIZE);
  readonly #dv = new DataView(this.bytes.buffer);

  constructor(private readonly onRecord: (r: FaultRecord) => void) {}

  get pending(): boolean {
    return this.head !== this.ack;
  }

  write(queue: number, code: number, iova: bigint): void {
    const at = (this.head % FAULT_LOG_ENTRIES) * FAULT_RECORD_SIZE;
    this.#dv.setUint16(at, queue & 0xffff, true);
    this.#dv.setUint16(at + 2, code & 0xffff, true);
    this.#dv.setUint32(at + 4, 0, true);
    this.#dv.setBigUint64(at + 8, BigInt.asUintN(64, iova), true);
    this.head = (this.head + 1) >>> 0;
    this.onRecord({ queue, code, iova });
  }

  clear(): void {
    this.head = 0;
    this.ack = 0;
    this.bytes.fill(0);
  }

  read32(offsetInLog: number): number {
    return this.#dv.getUint32(offsetInLog, true);
  }
}

/** Decode record `i` (0..15) of a 256-byte FAULT_LOG dump. */
export function decodeFaultRecord(log: Uint8Array, i: number): FaultRecord {
  const dv = new DataView(log.buffer, log.byteOffset + i * FAULT_RECORD_SIZE, FAULT_RECORD_SIZE);
  return { queue: dv.getUint16(0, true), code: dv.getUint16(2, true), iova: dv.getBigUint64(8, true) };
}
