// One queue's state (datasheet §2.2 QCFG and §2.3 queue page). The QCFG
// registers are fields over the register file (qcfg.ts), which the front end
// reads too; the queue page is shared memory the client maps, so its
// registers are read and written with Atomics. Processing is in engine.ts.

import {
  Q_NOTIFY_KICK_NEEDED,
  Q_VECTOR_NONE,
  QP_CQ_BASE,
  QP_CQ_HEAD,
  QP_CQ_SIZE,
  QP_CQ_TAIL,
  QP_IRQ_MODE,
  QP_Q_ERROR,
  QP_Q_NOTIFY,
  QP_REGISTERS_END,
  QP_SQ_BASE,
  QP_SQ_HEAD,
  QP_SQ_SIZE,
  QP_SQ_TAIL,
} from './datasheet.js';
import type { Descriptor } from './descriptor.js';
import type { DmaMapping } from './iommu.js';
import { QueueRegisters } from './qcfg.js';
import type { RegisterFile } from './register-file.js';

/** A descriptor fetched and not yet completed. */
export interface InFlight {
  desc: Descriptor;
  /** Device clock (ms) from which it may execute (per-descriptor delay injection). */
  readyAt: number;
  /** Set when memory it touches was unmapped while it waited: it completes as IOMMU_FAULT at this IOVA. */
  poisonIova: bigint | null;
}

const W = (byteOffset: number): number => byteOffset / 4;

export class Queue extends QueueRegisters {
  // --- ring state, latched at the first doorbell ---
  latched = false;
  sqBase = 0n;
  sqSize = 0;
  cqBase = 0n;
  cqSize = 0;
  sqHead = 0;
  cqTail = 0;
  inflight: InFlight[] = [];

  /** Completions owed an interrupt since this queue's vector last fired. */
  irqPending = 0;
  /** Did this queue complete or fetch anything in the current round. */
  busy = false;
  /** Q_NOTIFY.KICK_NEEDED as the device last set it (rev 2): its poller is asleep. */
  kickNeeded = false;

  // The rings as words of the memory they translate to (the engine's cache, engine.ts #rings): valid while
  // the IOMMU's generation is ringGen; null when a ring does not translate to one word-aligned piece.
  ringGen = -1;
  ringXlat = 0n;
  sqRing: Int32Array<ArrayBufferLike> | null = null;
  cqRing: Int32Array<ArrayBufferLike> | null = null;

  // The plain COPY's last translations (fast-path.ts): the maps its source and destination were found in, and
  // the source's view, valid while the IOMMU's generation is copyGen (any map added or removed, any
  // revocation noticed bumps it, so an unmapped or revoked map is never used from here).
  copyGen = -1;
  copyFrom: DmaMapping | null = null;
  copyTo: DmaMapping | null = null;
  /** copyFrom.view over [copyFromAt, +copyFromView.length), made once for a source used again. */
  copyFromView: Uint8Array | null = null;
  copyFromAt = 0;

  #u8: Uint8Array | null = null;
  #i32: Int32Array = new Int32Array(0);

  constructor(
    index: number,
    regs: RegisterFile,
    private readonly pageMemory: () => Uint8Array,
    /** Zeroes the page from a byte offset to its end without touching it (Backing.zeroPage), if it can. */
    private readonly zeroRest?: (from: number) => void,
  ) {
    super(index, regs);
    this.vector = Q_VECTOR_NONE;
  }

  /** The queue page as 32-bit words (re-derived when a revoke swapped the backing). */
  get words(): Int32Array {
    const u8 = this.pageMemory();
    if (u8 !== this.#u8) {
      this.#u8 = u8;
      this.#i32 = new Int32Array(u8.buffer, u8.byteOffset, QP_REGISTERS_END / 4);
    }
    return this.#i32;
  }

  /** SQ_TAIL as the device last read it (a doorbell that raced KICK_NEEDED shows as a change). */
  tailSeen = 0;

  get sqTail(): number {
    this.tailSeen = Atomics.load(this.words, W(QP_SQ_TAIL)) >>> 0;
    return this.tailSeen;
  }
  get cqHead(): number {
    return Atomics.load(this.words, W(QP_CQ_HEAD)) >>> 0;
  }
  get irqMode(): number {
    return Atomics.load(this.words, W(QP_IRQ_MODE)) >>> 0;
  }

  /** Copy the ring registers from the page (the first doorbell after enable). */
  latch(): void {
    const w = this.words;
    const u64 = (off: number): bigint =>
      (BigInt(Atomics.load(w, W(off) + 1) >>> 0) << 32n) | BigInt(Atomics.load(w, W(off)) >>> 0);
    this.sqBase = u64(QP_SQ_BASE);
    this.sqSize = Atomics.load(w, W(QP_SQ_SIZE)) >>> 0;
    this.cqBase = u64(QP_CQ_BASE);
    this.cqSize = Atomics.load(w, W(QP_CQ_SIZE)) >>> 0;
    this.latched = true;
    this.ringGen = -1;
  }

  /**
   * Store the device-owned (RO) registers into the page, overwriting anything a client put there. SQ_HEAD
   * and CQ_TAIL move with every descriptor; the other three are stored only when the page shows something
   * else (a change, or a client's stray store): each Atomics.store is a full fence, and on the hot path
   * (one publish per NOP) five of them were a third of the device's stores.
   */
  publish(): void {
    const w = this.words;
    Atomics.store(w, W(QP_SQ_HEAD), this.sqHead | 0);
    Atomics.store(w, W(QP_CQ_TAIL), this.cqTail | 0);
    // Loads of the line the stores above just took: no transfer.
    if (Atomics.load(w, W(QP_SQ_HEAD) + 1) !== 0) Atomics.store(w, W(QP_SQ_HEAD) + 1, 0);
    if (Atomics.load(w, W(QP_Q_ERROR)) !== this.lastError) Atomics.store(w, W(QP_Q_ERROR), this.lastError);
    const notify = this.kickNeeded ? Q_NOTIFY_KICK_NEEDED : 0;
    if (Atomics.load(w, W(QP_Q_NOTIFY)) !== notify) Atomics.store(w, W(QP_Q_NOTIFY), notify);
  }

  /**
   * Set or clear Q_NOTIFY.KICK_NEEDED (§2.3). Setting returns whether a doorbell is already waiting
   * (SQ_TAIL read after the flag is stored, both sequentially consistent: a client that stored SQ_TAIL
   * before our store is seen here, one that stores it after sees the flag and kicks).
   */
  setKickNeeded(on: boolean): boolean {
    const seen = this.tailSeen;
    this.kickNeeded = on;
    Atomics.store(this.words, W(QP_Q_NOTIFY), on ? Q_NOTIFY_KICK_NEEDED : 0);
    return on && this.sqTail !== seen;
  }

  /** Drop the plain COPY's cached translations (a queue reset; a new IOMMU generation drops them too). */
  forgetCopyMaps(): void {
    this.copyGen = -1;
    this.copyFrom = null;
    this.copyTo = null;
    this.copyFromView = null;
  }

  /** Device-side value of a page register for an owner read (RO registers are the device's). */
  pageRegister(byteOffset: number): number {
    switch (byteOffset) {
      case QP_SQ_HEAD:
        return this.sqHead;
      case QP_SQ_HEAD + 4:
        return 0;
      case QP_CQ_TAIL:
        return this.cqTail;
      case QP_Q_ERROR:
        return this.lastError;
      case QP_Q_NOTIFY:
        return this.kickNeeded ? Q_NOTIFY_KICK_NEEDED : 0;
      default:
        return byteOffset < QP_REGISTERS_END ? Atomics.load(this.words, W(byteOffset)) >>> 0 : 0;
    }
  }

  /** Owner write of a page register: RO and reserved words are ignored. */
  writePageRegister(byteOffset: number, value: number): void {
    switch (byteOffset) {
      case QP_SQ_BASE:
      case QP_SQ_BASE + 4:
      case QP_SQ_SIZE:
      case QP_SQ_TAIL:
      case QP_CQ_BASE:
      case QP_CQ_BASE + 4:
      case QP_CQ_SIZE:
      case QP_CQ_HEAD:
      case QP_IRQ_MODE:
        Atomics.store(this.words, W(byteOffset), value | 0);
        return;
      default:
        return;
    }
  }

  /**
   * Queue reset, minus the aborts (engine.ts writes those first): rings and indexes zeroed, ERROR cleared.
   * The windows and Q_XLAT are kept (§2.2); only a whole-device reset clears them (powerOn).
   */
  clearRings(): void {
    this.enabled = false;
    this.error = false;
    this.lastError = 0;
    this.completed = 0;
    this.bytes = 0;
    this.latched = false;
    this.ringGen = -1;
    this.sqRing = null;
    this.cqRing = null;
    this.forgetCopyMaps();
    this.sqBase = 0n;
    this.sqSize = 0;
    this.cqBase = 0n;
    this.cqSize = 0;
    this.sqHead = 0;
    this.cqTail = 0;
    this.inflight = [];
    this.publishInflight(0);
    this.irqPending = 0;
    this.kickNeeded = false;
    this.tailSeen = 0;
    const w = this.words;
    for (let i = 0; i < w.length; i++) Atomics.store(w, i, 0);
    // The reserved rest of the page reads zero (§2.3): clear whatever a client stored there.
    if (this.zeroRest) this.zeroRest(w.byteLength);
    else this.pageMemory().fill(0, w.byteLength);
  }

  /** Whole-device reset: QCFG back to its power-on values as well. */
  powerOn(): void {
    this.clearRings();
    this.winBase = 0n;
    this.winSize = 0n;
    this.memBase = 0;
    this.memSize = 0;
    this.xlat = 0n;
    this.vector = Q_VECTOR_NONE;
  }
}
