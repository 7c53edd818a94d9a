// The SA-1 register file: every owner-visible register value (BAR0 and
// config space) in one SharedArrayBuffer that the device worker and the
// vfio-user front end (main thread) both use. The device model stores every
// register value here (the few QCFG values only the device writes are also
// mirrored in its Queue objects for the engine's hot path, qcfg.ts), so the
// front end can answer a register read, and apply a register write that has
// no side effect, from the same memory without waking the worker
// (frontend.ts, bar0.ts).
//
// BAR0 is stored as its own image, word for word: a read of a plain
// register is one Atomics.load at its offset. Values derived from state
// (STATUS, HEARTBEAT, Q_STATUS) are computed by the reader from words kept
// here (bar0.ts). Every word is read and written with Atomics, so a value
// one thread stores is the value the other reads; 64-bit registers are two
// words (a read racing the device's update of a counter may pair halves from
// either side of a carry, as a 32-bit bus read on hardware would).

import {
  BAR0_SIZE,
  CONFIG_SPACE_SIZE,
  ID_VALUE,
  MSIX_ENTRY_SIZE,
  QCFG_STRIDE,
  REG_DEVMEM_GRANULE,
  REG_DEVMEM_SIZE_MB,
  REG_ID,
  REG_MSIX_TABLE,
  REG_NUM_QUEUES,
  REG_QCFG,
  REG_QUEUE_STRIDE,
} from './datasheet.js';
import type { Sa1Options } from './options.js';

// Device-private words after the BAR0 image and config space (never owner-visible as such).
const PRIV_HUNG = 0;
const PRIV_HEARTBEAT_FROZEN = 1;
const PRIV_HEARTBEAT_SEQ = 2;
/** Int32 words of the private area (the f64 slots follow, 8-byte aligned). */
const PRIV_WORDS = 4;
const F64_HEARTBEAT_BASE = 0;
const F64_RUNNING_SINCE = 1;
const F64_SLOTS = 2;

const CONFIG_AT = BAR0_SIZE;
const PRIV_AT = CONFIG_AT + CONFIG_SPACE_SIZE;
const F64_AT = PRIV_AT + PRIV_WORDS * 4;
export const REGISTER_FILE_BYTES = F64_AT + F64_SLOTS * 8;

/** The clock both threads use for HEARTBEAT: milliseconds since the epoch, sub-µs resolution. */
export const sharedClock = (): number => performance.timeOrigin + performance.now();

export class RegisterFile {
  readonly sab: SharedArrayBuffer;
  /** BAR0 as 32-bit words (index = byte offset / 4). */
  readonly bar0: Int32Array;
  /** Config space bytes (ConfigSpace applies the write masks). */
  readonly config: Uint8Array;
  readonly #priv: Int32Array;
  readonly #f64: Float64Array;

  /** A fresh register file with the read-only identity and geometry registers set. */
  static create(options: Sa1Options): RegisterFile {
    const regs = new RegisterFile(new SharedArrayBuffer(REGISTER_FILE_BYTES));
    regs.store(REG_ID, ID_VALUE);
    regs.store(REG_NUM_QUEUES, options.numQueues);
    regs.store(REG_QUEUE_STRIDE, options.queueStride);
    regs.store(REG_DEVMEM_SIZE_MB, Math.floor(options.devmemSize / (1024 * 1024)));
    regs.store(REG_DEVMEM_GRANULE, options.devmemGranule);
    regs.setHeartbeat(0, 0, true);
    return regs;
  }

  /** The other thread's view of a register file made by create(). */
  constructor(sab: SharedArrayBuffer) {
    if (sab.byteLength !== REGISTER_FILE_BYTES) {
      throw new RangeError(`register file is ${REGISTER_FILE_BYTES} bytes, got ${sab.byteLength}`);
    }
    this.sab = sab;
    this.bar0 = new Int32Array(sab, 0, BAR0_SIZE / 4);
    this.config = new Uint8Array(sab, CONFIG_AT, CONFIG_SPACE_SIZE);
    this.#priv = new Int32Array(sab, PRIV_AT, PRIV_WORDS);
    this.#f64 = new Float64Array(sab, F64_AT, F64_SLOTS);
  }

  /** The BAR0 word at byte offset `off`, unsigned. */
  load(off: number): number {
    return Atomics.load(this.bar0, off >> 2) >>> 0;
  }

  store(off: number, value: number): void {
    Atomics.store(this.bar0, off >> 2, value | 0);
  }

  /** A 64-bit register (low word at `off`). */
  load64(off: number): bigint {
    return (BigInt(this.load(off + 4)) << 32n) | BigInt(this.load(off));
  }

  store64(off: number, value: bigint): void {
    const v = BigInt.asUintN(64, value);
    this.store(off, Number(v & 0xffffffffn));
    this.store(off + 4, Number(v >> 32n));
  }

  /** A 64-bit counter kept below 2^53 (a JS number). */
  loadCount(off: number): number {
    return this.load(off) + this.load(off + 4) * 2 ** 32;
  }

  storeCount(off: number, value: number): void {
    this.store(off, value % 2 ** 32);
    this.store(off + 4, Math.floor(value / 2 ** 32));
  }

  /**
   * storeCount() of a counter that was `old`: equal values store nothing, and the high word only when it
   * changes (the hot path bumps Q_COMPLETED per descriptor; each store is a full fence). A reader may see
   * the low word wrap before the high word moves, as it could with storeCount().
   */
  updateCount(off: number, old: number, value: number): void {
    if (value === old) return;
    this.store(off, value % 2 ** 32);
    const hi = Math.floor(value / 2 ** 32);
    if (hi !== Math.floor(old / 2 ** 32)) this.store(off + 4, hi);
  }

  /** Byte offset of QCFG[q] in BAR0. */
  static qcfg(q: number): number {
    return REG_QCFG + q * QCFG_STRIDE;
  }

  /** The MSI-X table as bytes (NUM_QUEUES + 1 entries). */
  msixTable(numQueues: number): Uint8Array {
    return new Uint8Array(this.sab, REG_MSIX_TABLE, (numQueues + 1) * MSIX_ENTRY_SIZE);
  }

  // --- device-private state the front end needs for derived registers ---

  get hung(): boolean {
    return Atomics.load(this.#priv, PRIV_HUNG) !== 0;
  }
  set hung(v: boolean) {
    Atomics.store(this.#priv, PRIV_HUNG, v ? 1 : 0);
  }

  // HEARTBEAT = base + (now - runningSince) / period while running, base while frozen. Only the device
  // writes these three values, under a sequence word (odd while writing) so that a reader in the other
  // thread never combines a new base with an old start time.
  setHeartbeat(base: number, runningSince: number, frozen: boolean): void {
    Atomics.add(this.#priv, PRIV_HEARTBEAT_SEQ, 1);
    this.#f64[F64_HEARTBEAT_BASE] = base;
    this.#f64[F64_RUNNING_SINCE] = runningSince;
    Atomics.store(this.#priv, PRIV_HEARTBEAT_FROZEN, frozen ? 1 : 0);
    Atomics.add(this.#priv, PRIV_HEARTBEAT_SEQ, 1);
  }

  /** HEARTBEAT at time `now` (sharedClock in the simulator; the device's own clock in-process). */
  heartbeat(now: number, periodMs: number): number {
    for (;;) {
      const seq = Atomics.load(this.#priv, PRIV_HEARTBEAT_SEQ);
      const base = this.#f64[F64_HEARTBEAT_BASE] as number;
      const since = this.#f64[F64_RUNNING_SINCE] as number;
      const frozen = Atomics.load(this.#priv, PRIV_HEARTBEAT_FROZEN) !== 0;
      if (seq % 2 === 0 && Atomics.load(this.#priv, PRIV_HEARTBEAT_SEQ) === seq) {
        return (frozen ? base : base + Math.floor((now - since) / periodMs)) >>> 0;
      }
    }
  }

  get heartbeatFrozen(): boolean {
    return Atomics.load(this.#priv, PRIV_HEARTBEAT_FROZEN) !== 0;
  }
}
