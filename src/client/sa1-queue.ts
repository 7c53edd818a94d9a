// SA-1 queue helper: rings in leased DMA memory, descriptors submitted by
// writing the queue page's doorbell directly (no broker on the hot path),
// completions found by the phase bit, spinning briefly and then waiting on
// the queue's interrupt eventfd. Setting a queue up (options, the clean
// check, the rings and kick fd asked of the broker) is sa1-queue-setup.ts;
// submit()'s promises and the pump that collects them, sa1-pending.ts.

import { CQE_SIZE, Q_NOTIFY_KICK_NEEDED, QP, SQE_SIZE, STATUS_CODE, STATUS_NAME } from '../hw/sa1/regs.js';
import { monotonicMs } from '../sys/clock.js';
// Straight from the files, not sys/index.js: that also loads the servers' modules, and through node:fs ~20
// of Node's stream modules, which a client never uses (issue 16).
import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';
import type { DmaBuffer } from './dma.js';
import { leaseError } from './errors.js';
import type { Lease } from './lease.js';
import { type Completion, type Descriptor, writeSqe } from './sa1-descriptor.js';
import { PendingCompletions } from './sa1-pending.js';
import { type QueueOptions, setUpQueue } from './sa1-queue-setup.js';

export { type Completion, type Descriptor, DeviceStatusError } from './sa1-descriptor.js';
export { DEFAULT_COMPLETION_TIMEOUT_MS, type QueueOptions } from './sa1-queue-setup.js';

// The queue page's words the hot path touches, as indexes of its Uint32Array: module constants, not a property
// of the imported QP looked up (and divided) on every use, which costs when the path runs cold.
const SQ_TAIL_W = QP.SQ_TAIL / 4;
const SQ_HEAD_W = QP.SQ_HEAD / 4;
const CQ_HEAD_W = QP.CQ_HEAD / 4;
const Q_ERROR_W = QP.Q_ERROR / 4;
const Q_NOTIFY_W = QP.Q_NOTIFY / 4;
/** The addon's exports are a dictionary-mode object: the kick's function is looked up once, here. */
const eventfdKick = native.eventfdKick;

const FATAL = new Set<number>([
  STATUS_CODE.WINDOW_VIOLATION,
  STATUS_CODE.IOMMU_FAULT,
  STATUS_CODE.DEVMEM_VIOLATION,
  STATUS_CODE.BAD_QUEUE_CONFIG,
]);

export class Sa1Queue {
  readonly lease: Lease;
  readonly entries: number;
  readonly #page: DataView;
  /** The page as 32-bit words, for the doorbell and CQ_HEAD stores (made once: this is the hot path). */
  readonly #words: Uint32Array;
  /** Both rings in one DMA buffer (one map through the broker): the SQ at 0, the CQ after it. */
  readonly #rings: DmaBuffer;
  readonly #cqOffset: number;
  /** The SQ as 32-bit words: a descriptor is written as 16 word stores (this is the hot path). */
  readonly #sqWords: Uint32Array;
  readonly #cqView: DataView;
  /** The CQ as words: the status-and-phase word is read with Atomics.load (an acquire on arm64 too). */
  readonly #cqWords: Uint32Array;
  readonly #spinMs: number;
  readonly #timeoutMs: number;
  #tail = 0; // producer index (free-running)
  #cqHead = 0; // consumer index (free-running)
  #stoppedBy = 0; // a fatal status seen in a completion: the queue is in ERROR until our reset
  /** The last tag given (a number: tags stay far below 2^53, and number keys hash faster than bigints). */
  #tag = 0;
  /** submit()'s descriptors awaiting completion (sa1-pending.ts). */
  readonly #pending = new PendingCompletions();
  /** Descriptors post()ed and not collected yet (they have no entry in #pending). */
  #posted = 0;
  /** post()'s tags count on their own, with POSTED_TAG_HI in the high word: submit()'s stay below 2^53. */
  #postTag = 0;
  #postError = 0;
  /** #failAll for the pump (sa1-pending.ts), made once. */
  readonly #fail = (err: Error): void => this.#failAll(() => err);
  /** The queue page's ioeventfd (doorbell kick, rev 2; the lease owns it), or null when the device offers none. */
  readonly #kickFd: Fd | null;
  /** #kickFd's number (-1 without one), read once: the kick is the cold path's, and a getter costs there. */
  readonly #kickNumber: number;

  private constructor(
    lease: Lease,
    entries: number,
    rings: DmaBuffer,
    spinUs: number,
    kick: Fd | null,
    timeoutMs: number,
  ) {
    this.lease = lease;
    this.#kickFd = kick;
    this.#kickNumber = kick === null || kick.closed ? -1 : kick.fd;
    this.entries = entries;
    const page = lease.region(2);
    this.#page = new DataView(page.buffer);
    this.#words = new Uint32Array(page.buffer);
    this.#rings = rings;
    this.#cqOffset = entries * SQE_SIZE;
    this.#sqWords = new Uint32Array(rings.buffer, 0, (entries * SQE_SIZE) / 4);
    this.#cqView = new DataView(rings.buffer, this.#cqOffset, entries * CQE_SIZE);
    this.#cqWords = new Uint32Array(rings.buffer, this.#cqOffset, (entries * CQE_SIZE) / 4);
    this.#spinMs = spinUs / 1000;
    this.#timeoutMs = timeoutMs;
  }

  /** Allocate the rings in leased memory and program the queue page (the setup is sa1-queue-setup.ts). */
  static async create(lease: Lease, opts: QueueOptions = {}): Promise<Sa1Queue> {
    const s = await setUpQueue(lease, opts);
    const q = new Sa1Queue(lease, s.entries, s.rings, s.spinUs, s.kick, s.timeoutMs);
    q.#program();
    return q;
  }

  #program(): void {
    const p = this.#page;
    p.setBigUint64(QP.SQ_BASE, this.#rings.iova, true);
    p.setUint32(QP.SQ_SIZE, this.entries, true);
    p.setBigUint64(QP.CQ_BASE, this.#rings.iova + BigInt(this.#cqOffset), true);
    p.setUint32(QP.CQ_SIZE, this.entries, true);
    p.setUint32(QP.CQ_HEAD, 0, true);
    p.setUint32(QP.IRQ_MODE, 0, true);
    this.#rings.u8.fill(0);
    this.#tail = 0;
    this.#cqHead = 0;
    this.#stoppedBy = 0;
    this.#postError = 0;
  }

  /** The last error code the device reported (Q_ERROR), fatal or not; 0 since the last reset. */
  get lastError(): number {
    return (this.#words[Q_ERROR_W] as number) & 0xff; // little-endian, as every host SA-1 runs on
  }

  /**
   * The code that put the queue in ERROR, or 0 while it runs. The queue page shows only the last error
   * code; BAD_OPCODE and BAD_LENGTH leave the queue running, every other error code stops it (§4). The
   * device writes the faulting descriptor's completion before it shows ERROR (docs/SA-1.md), so a fatal
   * completion already collected means ERROR even while Q_ERROR still reads 0.
   */
  get error(): number {
    const code = this.lastError;
    return code !== 0 && FATAL.has(code) ? code : this.#stoppedBy;
  }

  /**
   * The status the last post()ed descriptor that failed completed with (a STATUS_CODE), 0 when none has since
   * the last reset. Known as its completion is collected; Q_ERROR (lastError) is stored just after it.
   */
  get postError(): number {
    return this.#postError;
  }

  /** Descriptors submitted or posted whose completion has not been collected. */
  get inFlight(): number {
    return this.#pending.size + this.#posted;
  }

  /**
   * Submit one descriptor; resolves with its completion, rejects with DeviceStatusError on a bad status.
   * The hot path: no batch array or per-descriptor closure beyond the promise's own.
   */
  submit(d: Descriptor): Promise<Completion> {
    this.#checkSubmit(1);
    const tag = ++this.#tag;
    writeSqe(this.#sqWords, this.#tail & (this.entries - 1), d, tag, true);
    // The doorbell before the bookkeeping: the promise, its table entry and the deadline's clock read (~0.1 µs
    // warm, microseconds cold) are made while a spinning device works on the descriptor (when a kick yields this
    // CPU to the device, it has mostly finished by then). Nothing collects a completion before they exist: only
    // poll() does, and nothing calls it in between (docs/performance-history.md, issue 16, twenty-seventh pass).
    this.#ring(1);
    const promise = this.#pending.add(tag, d.opcode, monotonicMs() + this.#timeoutMs);
    this.#startPump();
    return promise;
  }

  /**
   * Submit one descriptor for a caller that collects completions itself, spinning with spinUntil() or
   * calling poll(): no promise, no pending-table entry, no pump. It counts in inFlight until poll()
   * collects its completion; a bad status rejects nothing, it shows in postError once collected (and, for
   * one that stops the queue, in error; a queue stopped without a completion, its CQ unmapped, leaves them
   * counted: spinUntil's deadline ends the wait, error says why). The cheapest submit, for a thread that
   * polls: after an idle pause, when every object and code page the submit touches is cold, that is what the
   * first operation costs (issue 16).
   */
  post(d: Descriptor): void {
    // One function with no helper call before the doorbell (the lease's `closed` is its one getter; the kick
    // after it is one call): called once per operation, this stays
    // in V8's interpreter (never hot enough to be optimized), and after an idle pause each call, getter and
    // object on the way costs microseconds of cold fetches (issue 16, tenth pass). The checks below admit
    // only what #checkSubmit would; anything else goes to it, which names the error (or, for a non-fatal last
    // error, passes).
    const w = this.#words;
    const tail = this.#tail;
    const head = Atomics.load(w, SQ_HEAD_W);
    const consumed = ((this.#cqHead - head) | 0) > 0 ? this.#cqHead : head;
    if (
      this.lease.closed ||
      this.#stoppedBy !== 0 ||
      ((w[Q_ERROR_W] as number) & 0xff) !== 0 ||
      (tail - consumed) >>> 0 >= this.entries
    ) {
      this.#checkSubmit(1);
    }
    const tag = (this.#postTag + 1) >>> 0;
    this.#postTag = tag;
    writeSqe(this.#sqWords, tail & (this.entries - 1), d, tag, true, POSTED_TAG_HI);
    this.#posted++;
    const next = (tail + 1) >>> 0;
    this.#tail = next;
    // The doorbell and the kick as #ring() does them (its comment says why the order is safe).
    Atomics.store(w, SQ_TAIL_W, next);
    if (this.#kickFd !== null && (Atomics.load(w, Q_NOTIFY_W) & Q_NOTIFY_KICK_NEEDED) !== 0) this.#kick();
  }

  /** Submit several descriptors with one doorbell; each gets its own promise. */
  submitBatch(ds: Descriptor[]): Promise<Completion>[] {
    this.#checkSubmit(ds.length);
    const first = this.#tag + 1;
    for (let i = 0; i < ds.length; i++) {
      writeSqe(this.#sqWords, (this.#tail + i) & (this.entries - 1), ds[i]!, first + i, i === ds.length - 1);
    }
    this.#tag += ds.length;
    this.#ring(ds.length); // the doorbell before the bookkeeping: submit() says why
    const deadline = monotonicMs() + this.#timeoutMs;
    const promises = ds.map((d, i) => this.#pending.add(first + i, d.opcode, deadline));
    this.#startPump();
    return promises;
  }

  #checkSubmit(count: number): void {
    if (this.lease.closed) throw leaseError('ERR_DEVLEASE_CLOSED', 'the lease is closed');
    if (count > this.entries)
      throw leaseError('EINVAL', `batch of ${count} exceeds the ring's ${this.entries} entries`);
    if (this.error)
      throw leaseError(
        'EIO',
        `queue is in ERROR (${STATUS_NAME[this.error] ?? this.error}); reset() it first`,
      );
    const sqHead = this.#consumed();
    if (((this.#tail - sqHead) >>> 0) + count > this.entries) {
      throw leaseError('EAGAIN', 'submission ring full: wait for completions (back-pressure)');
    }
  }

  /** Publish `count` written descriptors: the doorbell, and the kick if the device asked for one. */
  #ring(count: number): void {
    this.#tail = (this.#tail + count) >>> 0;
    // The doorbell: a plain store into the mapped queue page. Atomics orders it after the descriptor writes
    // and is a full fence, so the Q_NOTIFY load below cannot pass it (datasheet §2.3, rev 2): a device that
    // set KICK_NEEDED before our store sees the flag's request answered by the kick; one that sets it later
    // reads our SQ_TAIL itself. The kick comes last, not before the descriptor: a device woken early tends to
    // preempt us on this CPU and find nothing (docs/SA-1.md, "the client kicks after its doorbell").
    Atomics.store(this.#words, SQ_TAIL_W, this.#tail);
    if (this.#kickFd !== null && (Atomics.load(this.#words, Q_NOTIFY_W) & Q_NOTIFY_KICK_NEEDED) !== 0) {
      this.#kick();
    }
  }

  #startPump(): void {
    // An async call makes a promise: only when it will run.
    if (!this.#pending.pumping) void this.#pending.pump(this, this.#spinMs, this.#timeoutMs, this.#fail);
  }

  #kick(): void {
    const fd = this.#kickFd;
    if (fd === null || fd.closed) return; // the lease closed: its number may belong to something else now
    try {
      // A queue that spins for its completions writes and yields once (native eventfd.cc): the woken device
      // thread often lands on this CPU, and the spin that follows would hold it off for a whole time slice
      // (~1.5 ms). One that never spins (spinUs 0) goes straight to its event loop, which frees the CPU.
      // The number was read once: open while fd is (checked just above).
      if (this.#spinMs > 0) eventfdKick(this.#kickNumber);
      else native.eventfdWrite(this.#kickNumber, 1);
    } catch {
      // EBADF: the lease closed under us (the doorbell itself was stored; the device's idle poll still
      // finds it). EAGAIN (a saturated counter, a wake-up pending anyway) is no error.
    }
  }

  /** Free submission slots right now. */
  get space(): number {
    return this.entries - ((this.#tail - this.#consumed()) >>> 0);
  }

  /**
   * Slots the device has consumed: the later of SQ_HEAD and the completions collected. Every completion is of
   * a fetched descriptor, and the device stores SQ_HEAD just after a completion's entry (docs/SA-1.md), so
   * right after collecting one SQ_HEAD may not show it yet; the count does.
   */
  #consumed(): number {
    const head = Atomics.load(this.#words, SQ_HEAD_W);
    return ((this.#cqHead - head) | 0) > 0 ? this.#cqHead : head;
  }

  /** Consume every completion the device has written; returns how many. Never blocks. */
  poll(): number {
    let n = 0;
    for (;;) {
      // entries is a power of two: the slot is the low bits, the pass parity the next bit up.
      const slot = this.#cqHead & (this.entries - 1);
      const phase = (this.#cqHead & this.entries) === 0 ? 1 : 0;
      const o = slot * CQE_SIZE;
      // The phase word first, with an ordered load: what the device stored before it (the tag and result)
      // is then visible too (docs/SA-1.md). The CQE is little-endian, as every host SA-1 runs on.
      const word = Atomics.load(this.#cqWords, o / 4 + 3);
      if (((word >>> 16) & 1) !== phase) break;
      const rawStatus = word & 0xffff;
      const tagHi = this.#cqWords[o / 4 + 1] as number;
      this.#cqHead = (this.#cqHead + 1) >>> 0;
      n++;
      if (rawStatus !== 0 && this.#stoppedBy === 0 && FATAL.has(rawStatus)) this.#stoppedBy = rawStatus;
      // Once a completion stopped the queue no post()ed descriptor will complete (§4), and a reset's ABORTED
      // completions may still come for them: the count stays at 0.
      if (this.#stoppedBy !== 0) this.#posted = 0;
      if (tagHi === POSTED_TAG_HI) {
        // A post()ed descriptor: nothing to settle.
        if (this.#posted > 0) this.#posted--;
        if (rawStatus !== 0) this.#postError = rawStatus;
        continue;
      }
      const tagLo = this.#cqView.getUint32(o, true);
      const c: Completion = {
        tag: tagHi === 0 ? BigInt(tagLo) : this.#cqView.getBigUint64(o, true),
        result: this.#cqView.getUint32(o + 8, true),
        status: STATUS_NAME[rawStatus] ?? 'UNKNOWN',
        rawStatus,
      };
      this.#pending.settle(tagLo + tagHi * 2 ** 32, c);
    }
    if (n) Atomics.store(this.#words, CQ_HEAD_W, this.#cqHead);
    return n;
  }

  /** Spin on the completion ring until `pred` holds or `timeoutNs` passes (hot-path measurements). */
  spinUntil(pred: () => boolean, timeoutNs = 1_000_000_000n): boolean {
    if (pred()) return true;
    // One look before the deadline is read: after a kick the device has usually run on this CPU during the
    // kick's yield, so the completion is there and a cold clock read would only delay seeing it (issue 16).
    this.poll();
    if (pred()) return true;
    // monotonicMs() (a double) rather than hrtime.bigint(), which allocates a BigInt per look.
    const end = monotonicMs() + Number(timeoutNs) / 1e6;
    while (!pred()) {
      this.poll();
      if (monotonicMs() > end) return pred(); // the last look may have brought it
    }
    return true;
  }

  #failAll(why: () => Error): void {
    this.#pending.failAll(why);
    this.#posted = 0; // never completing either
  }

  /** Ask the broker for a queue reset (after ERROR), then re-program the rings. */
  async reset(): Promise<void> {
    this.#failAll(() => leaseError('ECANCELED', 'queue reset'));
    await this.lease.resetQueue();
    this.#program();
  }

  // --- conveniences ---
  nop(): Promise<Completion> {
    return this.submit({ opcode: 'NOP' });
  }
  copy(src: bigint, dst: bigint, length: number, flags: Partial<Descriptor> = {}): Promise<Completion> {
    return this.submit({ opcode: 'COPY', src, dst, length, ...flags });
  }
  fill(dst: bigint, length: number, pattern: bigint, flags: Partial<Descriptor> = {}): Promise<Completion> {
    return this.submit({ opcode: 'FILL', dst, length, imm: pattern, ...flags });
  }
  crc32c(src: bigint, length: number, flags: Partial<Descriptor> = {}): Promise<Completion> {
    return this.submit({ opcode: 'CRC32C', src, length, ...flags });
  }
  writeImm(dst: bigint, value: bigint, flags: Partial<Descriptor> = {}): Promise<Completion> {
    return this.submit({ opcode: 'WRITE_IMM', dst, imm: value, ...flags });
  }

  /** Free the rings (the lease's close() frees them too). */
  async close(): Promise<void> {
    this.#failAll(() => leaseError('ERR_DEVLEASE_CLOSED', 'queue closed'));
    await this.#rings.free().catch(() => undefined);
  }
}

/** The high word of a post()ed descriptor's tag: submit()'s tags stay below 2^53, so never show it. */
const POSTED_TAG_HI = 0x8000_0000;
