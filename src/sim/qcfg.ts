// QCFG[q] (datasheet §2.2) as fields over the register file: the queue
// engine reads and writes them as plain properties while the front end reads
// the same words to answer the owner (bar0.ts). What the register file
// stores per queue:
//   Q_CTRL      b0 ENABLE (RESET is acted on when written and never stored)
//   Q_STATUS    b1 ERROR and b8..15 the last error; RUNNING and IDLE are
//               derived when read (they depend on device-wide state)
//   Q_INFLIGHT  published by the device after every turn (the in-flight list
//               itself is the engine's)
//   the rest    as the datasheet lays them out.

import {
  Q_BYTES,
  Q_COMPLETED,
  Q_CTRL,
  Q_CTRL_ENABLE,
  Q_INFLIGHT,
  Q_MEM_BASE,
  Q_MEM_SIZE,
  Q_STATUS,
  Q_STATUS_ERROR,
  Q_STATUS_ERROR_SHIFT,
  Q_VECTOR,
  Q_WIN_BASE,
  Q_WIN_SIZE,
} from './datasheet.js';
import { RegisterFile } from './register-file.js';

export class QueueRegisters {
  /** Byte offset of this queue's QCFG in BAR0. */
  readonly qcfgAt: number;

  constructor(
    readonly index: number,
    protected readonly regs: RegisterFile,
  ) {
    this.qcfgAt = RegisterFile.qcfg(index);
  }

  get enabled(): boolean {
    return (this.regs.load(this.qcfgAt + Q_CTRL) & Q_CTRL_ENABLE) !== 0;
  }
  set enabled(v: boolean) {
    this.regs.store(this.qcfgAt + Q_CTRL, v ? Q_CTRL_ENABLE : 0);
  }

  get error(): boolean {
    return (this.regs.load(this.qcfgAt + Q_STATUS) & Q_STATUS_ERROR) !== 0;
  }
  set error(v: boolean) {
    this.#storeStatus(v, this.lastError);
  }

  /** Q_STATUS b8..15: the last non-OK, non-ABORTED status this queue produced. */
  get lastError(): number {
    return (this.regs.load(this.qcfgAt + Q_STATUS) >>> Q_STATUS_ERROR_SHIFT) & 0xff;
  }
  set lastError(code: number) {
    this.#storeStatus(this.error, code);
  }

  get winBase(): bigint {
    return this.regs.load64(this.qcfgAt + Q_WIN_BASE);
  }
  set winBase(v: bigint) {
    this.regs.store64(this.qcfgAt + Q_WIN_BASE, v);
  }
  get winSize(): bigint {
    return this.regs.load64(this.qcfgAt + Q_WIN_SIZE);
  }
  set winSize(v: bigint) {
    this.regs.store64(this.qcfgAt + Q_WIN_SIZE, v);
  }
  get memBase(): number {
    return this.regs.load(this.qcfgAt + Q_MEM_BASE);
  }
  set memBase(v: number) {
    this.regs.store(this.qcfgAt + Q_MEM_BASE, v);
  }
  get memSize(): number {
    return this.regs.load(this.qcfgAt + Q_MEM_SIZE);
  }
  set memSize(v: number) {
    this.regs.store(this.qcfgAt + Q_MEM_SIZE, v);
  }
  get vector(): number {
    return this.regs.load(this.qcfgAt + Q_VECTOR);
  }
  set vector(v: number) {
    this.regs.store(this.qcfgAt + Q_VECTOR, v & 0xffff);
  }
  get completed(): number {
    return this.regs.loadCount(this.qcfgAt + Q_COMPLETED);
  }
  set completed(v: number) {
    this.regs.storeCount(this.qcfgAt + Q_COMPLETED, v);
  }
  get bytes(): number {
    return this.regs.loadCount(this.qcfgAt + Q_BYTES);
  }
  set bytes(v: number) {
    this.regs.storeCount(this.qcfgAt + Q_BYTES, v);
  }

  /** Q_INFLIGHT as the owner reads it. */
  publishInflight(count: number): void {
    this.regs.store(this.qcfgAt + Q_INFLIGHT, count);
  }

  #storeStatus(error: boolean, lastError: number): void {
    this.regs.store(
      this.qcfgAt + Q_STATUS,
      (error ? Q_STATUS_ERROR : 0) | ((lastError & 0xff) << Q_STATUS_ERROR_SHIFT),
    );
  }
}
