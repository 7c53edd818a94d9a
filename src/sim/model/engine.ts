// The queue engine (datasheet §2.3, §3, §4, §10): round-robin over the
// enabled queues, one descriptor per queue per turn, in-order completion with
// the phase bit, full-CQ back-pressure, window and IOMMU checks on every
// byte, per-queue address translation (Q_XLAT), and coalesced interrupts.
//
// A descriptor's data moves when it completes, so everything a turn does is
// atomic with respect to owner commands (which the worker serves between
// turns): once DMA_UNMAP is answered no later turn can reach the memory.
//
// Running a decoded descriptor (operand checks, the opcodes, the shrunken-backing
// check) is execute.ts; the hot paths (a plain NOP or COPY) stay in turn() here.

import { sleepSync } from '../../util/sleep-sync.js';
import {
  CQ_BASE_ALIGN,
  CQ_ENTRY_SIZE,
  FLAG_INTR,
  IRQ_MODE_EVERY,
  RING_MAX_ENTRIES,
  RING_MIN_ENTRIES,
  SQ_BASE_ALIGN,
  SQ_ENTRY_SIZE,
  ST_ABORTED,
  ST_BAD_LENGTH,
  ST_BAD_OPCODE,
  ST_BAD_QUEUE_CONFIG,
  ST_DEVMEM_VIOLATION,
  ST_IOMMU_FAULT,
  ST_WINDOW_VIOLATION,
} from './datasheet.js';
import { type Descriptor, decodeDescriptor, writeCompletion } from './descriptor.js';
import { deadAt, executeChecked, flushRemote, hostRanges, translate, windowFault } from './execute.js';
import { fail, isPlainNop, OK_NOP, type Outcome, plainCopy } from './fast-path.js';
import type { FaultLog } from './faults.js';
import type { Iommu } from './iommu.js';
import { type DeviceMemory, gather, type Segments } from './memory.js';
import type { InFlight, Queue } from './queue.js';

/** A queue signals once this many completions are owed an interrupt, even if it stays busy. */
export const IRQ_BATCH_MAX = 32;
/** Most descriptors one queue holds fetched-but-not-completed (only reached with a delay injected). */
export const MAX_INFLIGHT = 256;

export interface EngineContext {
  readonly iommu: Iommu;
  readonly devmem: DeviceMemory;
  readonly faults: FaultLog;
  now(): number;
  /** Per-descriptor delay (ms) in force for queue q. */
  delayMs(q: Queue): number;
  /** Config space bus master (§1): DMA is refused while it is clear. */
  busMaster(): boolean;
  /** STATUS.HUNG (§9): a hung device makes no progress, so it writes nothing until a reset ends the hang. */
  hung(): boolean;
  /** Fire queue q's MSI-X vector. */
  signalQueue(q: Queue): void;
  /** Wait out the lag injected for the next error before it shows its state (inject 'errorLag'), once. */
  errorLag(): void;
}

const isPow2Ring = (n: number): boolean =>
  n >= RING_MIN_ENTRIES && n <= RING_MAX_ENTRIES && (n & (n - 1)) === 0;

export class Engine {
  /** Scratch for one ring slot's translation (an SQE fetch, a CQE write): reused, never held across calls. */
  readonly #ringSegs: Segments = [];
  /** Scratch for one fetched SQE's bytes (decoded into its own Descriptor at once). */
  readonly #sqeScratch = new Uint8Array(SQ_ENTRY_SIZE);
  readonly #sqeView = new DataView(this.#sqeScratch.buffer);
  readonly #sqeWords = new Int32Array(this.#sqeScratch.buffer);

  constructor(private readonly ctx: EngineContext) {}

  /**
   * One turn of queue q: complete its oldest in-flight descriptor if ready,
   * else fetch one (executing it at once when no delay is injected).
   * Returns whether the queue did anything.
   */
  turn(q: Queue): boolean {
    const head = q.inflight[0];
    if (head && head.readyAt <= this.ctx.now()) {
      q.inflight.shift();
      this.#complete(q, head);
      return true;
    }
    const tail = q.sqTail;
    if (tail === q.sqHead) return false;
    if (!q.ringsChecked && !this.#checkRings(q)) return true;
    if ((tail - q.sqHead) >>> 0 > q.sqSize) {
      this.#queueFault(q, ST_BAD_QUEUE_CONFIG, BigInt(tail));
      return true;
    }
    const cqHead = q.cqHead; // a load from the client's page: read once per fetch
    if (((cqHead - q.cqTail) | 0) > 0) {
      // CQ_HEAD ahead of CQ_TAIL: completions consumed that were never written. Waiting for ring space would be
      // a silent stall (datasheet §2.3). CQ_HEAD is the fault record's "iova". One more than CQ_SIZE behind is
      // taken as a full ring instead: a queue page's renewal copies CQ_HEAD while this thread still completes
      // (host/page-revoke.ts), so a stale copy can be that far behind until the reset that follows.
      this.#queueFault(q, ST_BAD_QUEUE_CONFIG, BigInt(cqHead));
      return true;
    }
    if (((q.cqTail - cqHead) >>> 0) + q.inflight.length >= q.cqSize) return false; // CQ full: back-pressure
    if (q.inflight.length >= MAX_INFLIGHT) return false;

    const sqe = this.#sqeWords;
    const ring = this.#rings(q) ? q.sqRing : null;
    if (ring !== null) {
      // The SQ is one piece of mapped memory (the common case): the slot's words, no translation.
      const o = (q.sqHead & (q.sqSize - 1)) * (SQ_ENTRY_SIZE / 4);
      for (let i = 0; i < SQ_ENTRY_SIZE / 4; i++) sqe[i] = ring[o + i] as number;
    } else {
      const segs = this.#slotSegs(
        q,
        q.sqBase + BigInt((q.sqHead % q.sqSize) * SQ_ENTRY_SIZE),
        SQ_ENTRY_SIZE,
        false,
      );
      if (segs === null) return true;
      gather(segs, this.#sqeScratch);
    }
    if (this.ctx.iommu.sync()) {
      const slotIova = q.sqBase + BigInt((q.sqHead % q.sqSize) * SQ_ENTRY_SIZE);
      const shrank = deadAt(this.ctx.iommu, q, slotIova, SQ_ENTRY_SIZE);
      if (shrank !== null) {
        this.#queueFault(q, ST_IOMMU_FAULT, shrank);
        return true;
      }
    }
    const delay = this.ctx.delayMs(q);
    if (delay === 0 && q.inflight.length === 0 && isPlainNop(sqe)) {
      // A well-formed NOP completing at once (the hot path): no Descriptor, no BigInt; SQ_HEAD is published
      // with the completion (just before its entry), not at fetch as well.
      q.sqHead = (q.sqHead + 1) >>> 0;
      this.#writeCompletionWords(q, sqe[8] as number, sqe[9] as number, (sqe[0] as number) >>> 8, OK_NOP);
      return true;
    }
    if (delay === 0 && q.inflight.length === 0) {
      // A plain host-memory COPY completing at once: checked and run from the words (no BigInt); anything
      // it does not handle, or that fails a check, takes the decoded path below, which names the failure.
      const out = plainCopy(this.ctx.iommu, q, sqe);
      if (out !== null) {
        q.sqHead = (q.sqHead + 1) >>> 0;
        const written = this.#writeCompletionWords(
          q,
          sqe[8] as number,
          sqe[9] as number,
          (sqe[0] as number) >>> 8,
          out,
        );
        if (written && out.status === ST_IOMMU_FAULT) this.#queueFault(q, out.status, out.at); // as #complete()
        return true;
      }
    }
    // Decoded at once into its own object: the raw bytes are scratch, reused by the next fetch.
    const desc = decodeDescriptor(this.#sqeScratch, this.#sqeView);
    q.sqHead = (q.sqHead + 1) >>> 0;
    if (delay === 0 && q.inflight.length === 0) {
      this.#complete(q, { desc, readyAt: 0, poisonIova: null }); // publishes SQ_HEAD with the completion
      return true;
    }
    q.publish();
    q.inflight.push({ desc, readyAt: this.ctx.now() + delay, poisonIova: null });
    return true;
  }

  /**
   * Cache both rings as words of the memory they translate to, once per IOMMU generation (a map added or
   * removed, a revocation noticed) and Q_XLAT: a fetch and a completion then index the words instead of translating
   * their slot. Returns false when a ring does not translate to one word-aligned piece (unmapped, split
   * across maps, dead): the caller translates per slot, which faults exactly where it did.
   */
  #rings(q: Queue): boolean {
    const iommu = this.ctx.iommu;
    if (q.ringGen === iommu.generation && q.ringXlat === q.xlat) return q.sqRing !== null;
    q.sqRing = null;
    q.cqRing = null;
    const sq = this.#ringPiece(q, q.sqBase, q.sqSize * SQ_ENTRY_SIZE, false);
    const cq = sq && this.#ringPiece(q, q.cqBase, q.cqSize * CQ_ENTRY_SIZE, true);
    if (sq && cq) {
      q.sqRing = sq;
      q.cqRing = cq;
    }
    q.ringGen = iommu.generation; // after translating: a miss may have applied waiting maps
    q.ringXlat = q.xlat;
    return q.sqRing !== null;
  }

  /**
   * A ring slot translated per call (the slow path, when a ring is not one cached piece): its segments in the
   * shared scratch, or null with the IOMMU fault recorded on the queue.
   */
  #slotSegs(q: Queue, iova: bigint, length: number, write: boolean): Segments | null {
    const segs = this.#ringSegs;
    segs.length = 0;
    const fault = translate(this.ctx.iommu, q, iova, length, write, segs);
    if (fault === null) return segs;
    this.#queueFault(q, ST_IOMMU_FAULT, fault);
    return null;
  }

  #ringPiece(q: Queue, iova: bigint, length: number, write: boolean): Int32Array | null {
    const segs: Segments = [];
    // Local memory only: a ring in owner memory without an fd is reached per slot, through the owner.
    if (translate(this.ctx.iommu, q, iova, length, write, segs, true) !== null || segs.length !== 1)
      return null;
    const s = segs[0] as Uint8Array;
    if (s.byteOffset % 4 !== 0) return null;
    return new Int32Array(s.buffer, s.byteOffset, length / 4);
  }

  /**
   * Write ABORTED for every in-flight descriptor (queue reset or disable). With bus master clear the device
   * may not DMA (§1), and a hung device makes no progress (§9), so then they are dropped unwritten
   * (docs/SA-1.md): no completion, no count, no interrupt. A whole-device reset of a hung device drops them
   * too: its aborts come before the reset clears HUNG.
   */
  abort(q: Queue): void {
    const pending = q.inflight;
    q.inflight = [];
    if (pending.length > 0 && this.ctx.busMaster() && !this.ctx.hung()) {
      for (const entry of pending) {
        if (!this.#writeCompletion(q, entry.desc, { status: ST_ABORTED, result: 0, bytes: 0, at: 0n })) break;
      }
    }
    if (q.irqPending > 0) this.flushInterrupt(q); // owed for completions written before: not DMA, still due
  }

  /**
   * Mark in-flight descriptors touching device IOVAs [iova, iova+size) (an unmapped range) so they
   * complete as IOMMU_FAULT, at the address as the queue saw it (its addresses are IOVA - Q_XLAT).
   */
  poison(q: Queue, iova: number, size: number): void {
    const xlat = q.xlat;
    const lo = BigInt(iova);
    const hi = lo + BigInt(size);
    for (const entry of q.inflight) {
      if (entry.poisonIova !== null) continue;
      for (const r of hostRanges(entry.desc)) {
        const start = BigInt.asUintN(64, r.start + xlat);
        const end = start + BigInt(r.length);
        if (start < hi && end > lo) {
          entry.poisonIova = start > lo ? r.start : BigInt.asUintN(64, lo - xlat);
          break;
        }
      }
    }
  }

  flushInterrupt(q: Queue): void {
    q.irqPending = 0;
    this.ctx.signalQueue(q);
  }

  /**
   * Latch the ring registers (the first doorbell after a queue reset) and check them against the windows of
   * this enable; on a bad configuration the queue goes to ERROR. Runs once per enable: the rings stay latched
   * across a disable (§2.3: until a queue reset), the windows do not (§2.2), so a re-enabled queue whose
   * window no longer holds its rings faults here instead of fetching and completing outside it.
   */
  #checkRings(q: Queue): boolean {
    if (!q.latched) q.latch();
    q.ringsChecked = true;
    if (!isPow2Ring(q.sqSize) || q.sqBase % BigInt(SQ_BASE_ALIGN) !== 0n) {
      this.#queueFault(q, ST_BAD_QUEUE_CONFIG, q.sqBase);
      return false;
    }
    if (!isPow2Ring(q.cqSize) || q.cqBase % BigInt(CQ_BASE_ALIGN) !== 0n) {
      this.#queueFault(q, ST_BAD_QUEUE_CONFIG, q.cqBase);
      return false;
    }
    const sqBad = windowFault(q, q.sqBase, q.sqSize * SQ_ENTRY_SIZE);
    const cqBad = sqBad ?? windowFault(q, q.cqBase, q.cqSize * CQ_ENTRY_SIZE);
    if (cqBad !== null) {
      this.#queueFault(q, ST_WINDOW_VIOLATION, cqBad);
      return false;
    }
    return true;
  }

  #complete(q: Queue, entry: InFlight): void {
    const out =
      entry.poisonIova !== null
        ? fail(ST_IOMMU_FAULT, entry.poisonIova)
        : executeChecked(this.ctx, q, entry.desc);
    // The completion first, then the fault record and ERROR (§4): a client that sees the queue in ERROR
    // must already be able to find the faulting descriptor's completion. A CQ slot that is itself unmapped
    // has already faulted the queue (IOMMU_FAULT, its one record): nothing more to record.
    if (!this.#writeCompletion(q, entry.desc, out)) return;
    if (
      out.status === ST_WINDOW_VIOLATION ||
      out.status === ST_IOMMU_FAULT ||
      out.status === ST_DEVMEM_VIOLATION
    ) {
      this.#queueFault(q, out.status, out.at);
    }
  }

  /**
   * Write one completion. When the CQ slot itself is unmapped, or its backing shrank under the store (the
   * window was checked at latch) only a fault record is written; returns false then.
   */
  #writeCompletion(q: Queue, desc: Descriptor, out: Outcome): boolean {
    const tagLo = Number(desc.tag & 0xffff_ffffn) | 0;
    const tagHi = Number(desc.tag >> 32n) | 0;
    return this.#writeCompletionWords(q, tagLo, tagHi, desc.flags, out);
  }

  /**
   * The CQE (§3): the tag and result as plain word stores, then the status and phase word with
   * Atomics.store, which orders them before it (the phase is what the client polls); the counters before it
   * (#beforePhase), SQ_HEAD and CQ_TAIL together after it (q.publish). The CQ base is 16-byte aligned (latch
   * checks it), so every slot is 4-byte aligned.
   * Int32Array stores are little-endian, as the CQE is, on every host Node runs SA-1 on (x86-64, arm64).
   */
  #writeCompletionWords(q: Queue, tagLo: number, tagHi: number, flags: number, out: Outcome): boolean {
    const phase = Math.floor(q.cqTail / q.cqSize) & 1 ? 0 : 1;
    const word = (out.status & 0xffff) | (phase << 16);
    const ring = this.#rings(q) ? q.cqRing : null;
    if (ring !== null) {
      const i = (q.cqTail & (q.cqSize - 1)) * (CQ_ENTRY_SIZE / 4);
      ring[i] = tagLo;
      ring[i + 1] = tagHi;
      ring[i + 2] = out.result | 0;
      this.#beforePhase(q, out);
      Atomics.store(ring, i + 3, word);
    } else {
      const segs = this.#slotSegs(
        q,
        q.cqBase + BigInt((q.cqTail % q.cqSize) * CQ_ENTRY_SIZE),
        CQ_ENTRY_SIZE,
        true,
      );
      if (segs === null) return false;
      this.#beforePhase(q, out);
      const tag = (BigInt(tagHi >>> 0) << 32n) | BigInt(tagLo >>> 0);
      writeCompletion(segs[0] as Uint8Array, tag, out.result, out.status, phase);
      // A CQ in owner memory without an fd: the entry goes to the owner now, whole; one it did not take is no
      // completion (as a slot whose backing shrank, below).
      const unsent = flushRemote(this.ctx.iommu, q);
      if (unsent !== null) {
        q.completed -= 1;
        q.bytes -= out.bytes;
        this.#queueFault(q, ST_IOMMU_FAULT, unsent);
        return false;
      }
    }
    // A CQ whose backing shrank (rev 2 §7): the store that found it gone went to the guard's zero page, so
    // the completion is not in the ring. Checked after the phase word, so a shrink racing any of the slot's
    // stores is seen; one load when no mapping was revoked, as for the SQ fetch.
    if (this.ctx.iommu.sync() && this.#cqSlotDied(q, out)) return false;
    // Injected (tests): the CQE is out, CQ_TAIL and the interrupt not yet.
    if (this.completionLagMs !== 0) this.#lagCompletion();
    q.cqTail = (q.cqTail + 1) >>> 0;
    // A fatal status's Q_ERROR comes with ERROR itself, after the completion (#queueFault).
    if (out.status === ST_BAD_OPCODE || out.status === ST_BAD_LENGTH) q.lastError = out.status;
    q.publish(); // SQ_HEAD and CQ_TAIL together, after the entry
    if (q.irqMode === IRQ_MODE_EVERY || (flags & FLAG_INTR) !== 0) q.irqPending++;
    return true;
  }

  /**
   * Stored before the CQE's phase word (docs/SA-1.md): the owner's Q_COMPLETED / Q_BYTES, so an owner asked
   * after a client saw the completion counts it. SQ_HEAD is not: it goes out with CQ_TAIL after the phase
   * word, in the queue page's one line the client writes too; stored before, it cost the hot path one more
   * cross-core transfer of that line per NOP (C client 0.76–0.98 → 1.29–1.35 µs). A client counts its
   * collected completions as consumed slots instead (both devlease clients do).
   */
  #beforePhase(q: Queue, out: Outcome): void {
    q.completed += 1;
    q.bytes += out.bytes;
  }

  /**
   * After a revocation: if the CQ slot just written lies in a map whose backing shrank, take back the counts
   * #beforePhase gave it (Q_COMPLETED counts completions written) and fault the queue at the slot's IOVA,
   * leaving CQ_TAIL where it was (§7: an access past the end completes as IOMMU_FAULT).
   */
  #cqSlotDied(q: Queue, out: Outcome): boolean {
    const slot = q.cqBase + BigInt((q.cqTail % q.cqSize) * CQ_ENTRY_SIZE);
    const at = deadAt(this.ctx.iommu, q, slot, CQ_ENTRY_SIZE);
    if (at === null) return false;
    q.completed -= 1;
    q.bytes -= out.bytes;
    this.#queueFault(q, ST_IOMMU_FAULT, at);
    return true;
  }

  /** inject completionLag: ms the next completion holds between its CQE and CQ_TAIL (0: none). */
  completionLagMs = 0;

  #lagCompletion(): void {
    const ms = this.completionLagMs;
    this.completionLagMs = 0;
    sleepSync(ms);
  }

  #queueFault(q: Queue, code: number, at: bigint): void {
    const record = this.ctx.faults.record(q.index, code, at);
    // Injected (tests): the completion and record are out, ERROR not yet: a device slow here.
    this.ctx.errorLag();
    q.lastError = code; // before ERROR: Q_STATUS never shows ERROR with the previous code
    q.error = true;
    q.publish();
    this.ctx.faults.signal(record);
  }
}
