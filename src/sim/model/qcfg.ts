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
  Q_XLAT,
} from './datasheet.js';
import { RegisterFile } from './register-file.js';

/**
 * A queue's window and Q_XLAT as JS numbers, for the engine's fast COPY (fast-path.ts): the window
 * [base, end) as the queue sees it, and Q_XLAT, added to an address in it to reach the device's IOVA.
 */
export interface PlainWindow {
  readonly base: number;
  readonly end: number;
  readonly xlat: number;
}

export class QueueRegisters {
  /** Byte offset of this queue's QCFG in BAR0. */
  readonly qcfgAt: number;

  // Registers only the device writes (the owner's Q_CTRL write is the device's to act on) are mirrored
  // here, so the engine's hot path reads plain fields; every change is also stored for the front end.
  #enabled = false;
  #error = false;
  #lastError = 0;
  #completed = 0;
  #bytes = 0;
  // The windows and Q_XLAT, as of the last enable: the owner cannot change them while the queue is enabled (§2.2),
  // so while enabled the engine reads this copy instead of building BigInts from shared words. The setters below
  // run only on a disabled queue (powerOn), whose getters read the register file; the next enable copies again.
  #winBase = 0n;
  #winSize = 0n;
  #memBase = 0;
  #memSize = 0;
  #xlat = 0n;
  #plainWindow: PlainWindow | null = null;
  /** Q_INFLIGHT as last stored (the register file starts at 0, and only publishInflight stores it). */
  #inflightShown = 0;
  /** Called when ENABLE or ERROR changes (the device's list of queues a round visits is stale then). */
  onRunStateChange: (() => void) | null = null;
  /**
   * The latched rings were checked against the windows of the current enable (engine.ts #checkRings). Every
   * enable clears it: the owner may have moved or shrunk the window while the queue was disabled (§2.2), and
   * §4 holds the rings to the window in force, so a queue re-enabled with latched rings is checked again.
   */
  ringsChecked = false;

  constructor(
    readonly index: number,
    protected readonly regs: RegisterFile,
  ) {
    this.qcfgAt = RegisterFile.qcfg(index);
  }

  get enabled(): boolean {
    return this.#enabled;
  }
  set enabled(v: boolean) {
    if (v && !this.#enabled) {
      this.#winBase = this.regs.load64(this.qcfgAt + Q_WIN_BASE);
      this.#winSize = this.regs.load64(this.qcfgAt + Q_WIN_SIZE);
      this.#memBase = this.regs.load(this.qcfgAt + Q_MEM_BASE);
      this.#memSize = this.regs.load(this.qcfgAt + Q_MEM_SIZE);
      this.#xlat = this.regs.load64(this.qcfgAt + Q_XLAT);
      this.#plainWindow = exactWindow(this.#winBase, this.#winSize, this.#xlat);
      this.ringsChecked = false;
    }
    const changed = v !== this.#enabled;
    this.#enabled = v;
    this.regs.store(this.qcfgAt + Q_CTRL, v ? Q_CTRL_ENABLE : 0);
    if (changed) this.onRunStateChange?.();
  }

  get error(): boolean {
    return this.#error;
  }
  set error(v: boolean) {
    const changed = v !== this.#error;
    this.#error = v;
    this.#storeStatus();
    if (changed) this.onRunStateChange?.();
  }

  /** Q_STATUS b8..15: the last non-OK, non-ABORTED status this queue produced. */
  get lastError(): number {
    return this.#lastError;
  }
  set lastError(code: number) {
    this.#lastError = code & 0xff;
    this.#storeStatus();
  }

  get winBase(): bigint {
    return this.#enabled ? this.#winBase : this.regs.load64(this.qcfgAt + Q_WIN_BASE);
  }
  set winBase(v: bigint) {
    this.#winBase = v;
    this.regs.store64(this.qcfgAt + Q_WIN_BASE, v);
  }
  get winSize(): bigint {
    return this.#enabled ? this.#winSize : this.regs.load64(this.qcfgAt + Q_WIN_SIZE);
  }
  set winSize(v: bigint) {
    this.#winSize = v;
    this.regs.store64(this.qcfgAt + Q_WIN_SIZE, v);
  }
  get memBase(): number {
    return this.#enabled ? this.#memBase : this.regs.load(this.qcfgAt + Q_MEM_BASE);
  }
  set memBase(v: number) {
    this.#memBase = v >>> 0;
    this.regs.store(this.qcfgAt + Q_MEM_BASE, v);
  }
  get memSize(): number {
    return this.#enabled ? this.#memSize : this.regs.load(this.qcfgAt + Q_MEM_SIZE);
  }
  set memSize(v: number) {
    this.#memSize = v >>> 0;
    this.regs.store(this.qcfgAt + Q_MEM_SIZE, v);
  }
  /** Q_XLAT (rev 2): added, mod 2^64, to every IOVA the queue uses once it passed the window check. */
  get xlat(): bigint {
    return this.#enabled ? this.#xlat : this.regs.load64(this.qcfgAt + Q_XLAT);
  }
  set xlat(v: bigint) {
    this.#xlat = BigInt.asUintN(64, v);
    this.regs.store64(this.qcfgAt + Q_XLAT, v);
  }
  /**
   * The window and Q_XLAT as numbers while the queue is enabled (they are fixed then, §2.2), for the fast
   * COPY; null while disabled, and for a window it cannot take exactly (exactWindow()).
   */
  get plainWindow(): PlainWindow | null {
    return this.#enabled ? this.#plainWindow : null;
  }
  /** Read from the register file every time: the owner may change it while the queue runs. */
  get vector(): number {
    return this.regs.load(this.qcfgAt + Q_VECTOR);
  }
  set vector(v: number) {
    this.regs.store(this.qcfgAt + Q_VECTOR, v);
  }
  get completed(): number {
    return this.#completed;
  }
  set completed(v: number) {
    this.regs.updateCount(this.qcfgAt + Q_COMPLETED, this.#completed, v);
    this.#completed = v;
  }
  get bytes(): number {
    return this.#bytes;
  }
  set bytes(v: number) {
    this.regs.updateCount(this.qcfgAt + Q_BYTES, this.#bytes, v);
    this.#bytes = v;
  }

  /** Q_INFLIGHT as the owner reads it. */
  publishInflight(count: number): void {
    // After every busy turn; unchanged (0 → 0) for every descriptor that completes at once.
    if (count === this.#inflightShown) return;
    this.#inflightShown = count;
    this.regs.store(this.qcfgAt + Q_INFLIGHT, count);
  }

  #storeStatus(): void {
    this.regs.store(
      this.qcfgAt + Q_STATUS,
      (this.#error ? Q_STATUS_ERROR : 0) | (this.#lastError << Q_STATUS_ERROR_SHIFT),
    );
  }
}

/**
 * The window and Q_XLAT as numbers, or null when they cannot be taken exactly: an empty window, or one whose
 * end, or end + Q_XLAT (the highest device IOVA a descriptor inside it reaches), passes 2^53; and a Q_XLAT that
 * wraps (a holder's view above the device's addresses, 2^64 − x). The decoded path handles those in BigInts.
 */
function exactWindow(base: bigint, size: bigint, xlat: bigint): PlainWindow | null {
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  if (size === 0n || base + size > max || base + size + xlat > max) return null;
  return { base: Number(base), end: Number(base + size), xlat: Number(xlat) };
}
