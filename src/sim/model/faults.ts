// The fault log (datasheet §2.1 FAULT_HEAD/FAULT_ACK/FAULT_LOG, §5): a ring
// of 16 records of 16 bytes indexed by the running count mod 16. Writing a
// record raises the fault vector; the device wires that up (onRecord). The
// log is part of BAR0, so it lives in the register file.

import {
  FAULT_LOG_ENTRIES,
  FAULT_RECORD_SIZE,
  REG_FAULT_ACK,
  REG_FAULT_HEAD,
  REG_FAULT_LOG,
} from './datasheet.js';
import type { RegisterFile } from './register-file.js';

export interface FaultRecord {
  queue: number;
  code: number;
  iova: bigint;
}

export class FaultLog {
  constructor(
    private readonly regs: RegisterFile,
    private readonly onRecord: (r: FaultRecord) => void,
  ) {}

  /** FAULT_HEAD: records ever written, mod 2^32. */
  get head(): number {
    return this.regs.load(REG_FAULT_HEAD);
  }
  /** FAULT_ACK: what the owner says it consumed. */
  get ack(): number {
    return this.regs.load(REG_FAULT_ACK);
  }
  set ack(v: number) {
    this.regs.store(REG_FAULT_ACK, v);
  }

  get pending(): boolean {
    return this.head !== this.ack;
  }

  /** A record, and the fault vector for it (`record` then `signal`). */
  write(queue: number, code: number, iova: bigint): void {
    this.signal(this.record(queue, code, iova));
  }

  /**
   * The record first, then FAULT_HEAD: an owner that sees the new head finds the record in place. No
   * interrupt yet: a device error stores its record, then the state that shows the error (Q_ERROR,
   * FW_STATUS, STATUS.HUNG), then `signal`s, so an owner woken by the vector, or one that sees the state,
   * finds everything the error wrote (docs/SA-1.md "What an error makes visible, in order").
   */
  record(queue: number, code: number, iova: bigint): FaultRecord {
    const head = this.head;
    const at = REG_FAULT_LOG + (head % FAULT_LOG_ENTRIES) * FAULT_RECORD_SIZE;
    this.regs.store(at, (queue & 0xffff) | ((code & 0xffff) << 16));
    this.regs.store(at + 4, 0);
    this.regs.store64(at + 8, iova);
    this.regs.store(REG_FAULT_HEAD, (head + 1) >>> 0);
    return { queue, code, iova };
  }

  /** Raise the fault vector for a record written with `record`. */
  signal(r: FaultRecord): void {
    this.onRecord(r);
  }

  clear(): void {
    for (let off = 0; off < FAULT_LOG_ENTRIES * FAULT_RECORD_SIZE; off += 4)
      this.regs.store(REG_FAULT_LOG + off, 0);
    this.regs.store(REG_FAULT_ACK, 0);
    this.regs.store(REG_FAULT_HEAD, 0);
  }
}

/** Decode record `i` (0..15) of a 256-byte FAULT_LOG dump. */
export function decodeFaultRecord(log: Uint8Array, i: number): FaultRecord {
  const dv = new DataView(log.buffer, log.byteOffset + i * FAULT_RECORD_SIZE, FAULT_RECORD_SIZE);
  return { queue: dv.getUint16(0, true), code: dv.getUint16(2, true), iova: dv.getBigUint64(8, true) };
}
