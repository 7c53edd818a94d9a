// Device DMA into owner memory that came without an fd (datasheet rev 2 §7): the device thread reaches it
// through VFIO_USER_DMA_READ/DMA_WRITE messages to the owner, which only the main thread can send and
// receive (it owns the connection). The two meet in a small shared area: the device writes one access (op,
// IOVA, length, and a write's bytes) and blocks on the state word; the main thread, woken by
// Atomics.waitAsync on that word, claims the access, sends the messages through the connection's PeerDma,
// copies a read's bytes in, and publishes the outcome. One access at a time (the device thread is one
// thread), at most REMOTE_CHUNK bytes: larger ones go in pieces.
//
// The state word carries a sequence number with the state, and each side moves it only by compare-exchange
// from the exact value it saw: the device gives an access up (its deadline) only while it is not being
// answered, and the main thread writes an answer only into the access it claimed, so no answer lands in the
// next access. An access being served is checked before every message it sends (it stops at once when it
// was cancelled, abandoned or its range unmapped), so nothing reaches the owner for a range after the unmap
// that took it was answered — not even into a new map at the same IOVA.
//
// Correct, and slow: each access is a message round trip through the main thread. The owner's memory that
// came with an fd is mapped and never goes through here.

import { VfioError } from '../../errors.js';
import { waitAsync } from '../../util/wait-async.js';
import type { PeerDma } from '../../vfio/user/peer-dma.js';
import type { RemoteMemory } from '../model/iommu.js';

/**
 * Bytes one DMA_READ/DMA_WRITE message carries at most (and at most the owner's max_data_xfer_size), and so
 * one access of the device. QEMU 11.1 advertises 1 MiB, but a DMA_READ reply of more than about 214 KiB
 * stalls in its socket and never completes (observed: its non-blocking write is not resumed), which kills
 * its device; 64 KiB is well clear.
 */
export const REMOTE_CHUNK = 64 * 1024;
/**
 * How long the main thread gives the owner to answer one access, all its messages together. Below QEMU's own
 * per-request deadline (5 s): an owner command the device answers only after such an access must still be
 * answered in QEMU's time, since QEMU treats a reply after its deadline as a broken connection.
 */
export const REMOTE_DMA_TIMEOUT_MS = 2_000;
/** How long the device waits for an answer: the owner's deadline and a margin. */
const DEVICE_WAIT_MS = REMOTE_DMA_TIMEOUT_MS + 1_000;

// Words of the control area.
const W_STATE = 0; // (seq << 3) | state
const W_OP = 1;
const W_LENGTH = 2;
const W_ERRNO = 3;
const W_IOVA_LO = 4;
const W_IOVA_HI = 5;
/** 1 while no owner can serve an access: the device fails one at once, without asking the main thread. */
const W_NO_OWNER = 6;
/**
 * 1 while the main thread waits for the device to take post W_FAIL_UNTIL, a command the owner waits for too
 * (failFast): the device fails accesses at once until it has taken that post (W_TAKEN of the mailbox), the
 * main thread clears it when its wait ends.
 */
const W_FAIL_FAST = 7;
const W_FAIL_UNTIL = 8;
const WORDS = 10;

// States (low 3 bits of W_STATE).
const ASKED = 1; // the device wrote an access and waits
const SERVING = 2; // the main thread claimed it (read its fields and bytes) and is sending it
const TAKEN = 3; // the main thread is writing the answer
const DONE = 4; // answered: W_ERRNO 0, or the errno
const ABANDONED = 5; // the device gave it up first

const OP_READ = 1;
const OP_WRITE = 2;

const ENODEV = 19;
const ETIMEDOUT = 110;

export const newRemoteDmaMemory = (): SharedArrayBuffer => new SharedArrayBuffer(WORDS * 4 + REMOTE_CHUNK);

const stateOf = (v: number): number => v & 7;
const seqOf = (v: number): number => v >>> 3;
const word = (seq: number, state: number): number => (seq << 3) | state | 0;

/** The device thread's side: the owner's memory as RemoteMemory for the IOMMU (iommu.ts). */
export class RemoteDmaDevice implements RemoteMemory {
  readonly #w: Int32Array;
  readonly #data: Uint8Array;
  #seq = 0;
  /** Accesses and the ones that failed (stats). */
  accesses = 0;
  failures = 0;

  /** `taken`: the number of the last post the device took (its mailbox's W_TAKEN). */
  constructor(
    sab: SharedArrayBuffer,
    private readonly taken: () => number,
  ) {
    this.#w = new Int32Array(sab, 0, WORDS);
    this.#data = new Uint8Array(sab, WORDS * 4, REMOTE_CHUNK);
  }

  read(iova: number, into: Uint8Array): number {
    for (let done = 0; done < into.length; ) {
      const n = Math.min(REMOTE_CHUNK, into.length - done);
      if (this.#access(OP_READ, iova + done, n) !== 0) return iova + done;
      into.set(this.#data.subarray(0, n), done);
      done += n;
    }
    return -1;
  }

  write(iova: number, data: Uint8Array): number {
    for (let done = 0; done < data.length; ) {
      const n = Math.min(REMOTE_CHUNK, data.length - done);
      this.#data.set(data.subarray(done, done + n));
      if (this.#access(OP_WRITE, iova + done, n) !== 0) return iova + done;
      done += n;
    }
    return -1;
  }

  /**
   * Fail at once: no owner, or the main thread waits for this thread to take a command the owner waits for too
   * (and this thread has not taken it yet: once taken, its next descriptor goes on as usual).
   */
  #refused(): boolean {
    const w = this.#w;
    if (Atomics.load(w, W_NO_OWNER) !== 0) return true;
    return Atomics.load(w, W_FAIL_FAST) !== 0 && ((this.taken() - Atomics.load(w, W_FAIL_UNTIL)) | 0) < 0;
  }

  /** One access of at most REMOTE_CHUNK bytes: 0, or the errno it failed with. */
  #access(op: number, iova: number, length: number): number {
    const w = this.#w;
    this.accesses++;
    if (this.#refused()) {
      this.failures++;
      return ENODEV;
    }
    this.#seq = (this.#seq + 1) & 0x0fff_ffff;
    const seq = this.#seq;
    w[W_OP] = op;
    w[W_LENGTH] = length;
    w[W_IOVA_LO] = iova % 2 ** 32;
    w[W_IOVA_HI] = Math.floor(iova / 2 ** 32);
    w[W_ERRNO] = 0;
    const asked = word(seq, ASKED);
    Atomics.store(w, W_STATE, asked); // orders the fields above before it
    Atomics.notify(w, W_STATE);
    const deadline = performance.now() + DEVICE_WAIT_MS;
    for (;;) {
      const v = Atomics.load(w, W_STATE);
      if (v === word(seq, DONE)) {
        const errno = Atomics.load(w, W_ERRNO);
        if (errno !== 0) this.failures++;
        return errno;
      }
      // Refused meanwhile (the main thread notifies this word when it starts refusing), or past the deadline:
      // give up while the main thread is not writing the answer (TAKEN: it is moments from DONE).
      const left = deadline - performance.now();
      const refused = this.#refused();
      const open = v === asked || v === word(seq, SERVING);
      if (open && (refused || left <= 0)) {
        if (Atomics.compareExchange(w, W_STATE, v, word(seq, ABANDONED)) === v) {
          this.failures++;
          return refused ? ENODEV : ETIMEDOUT;
        }
        continue;
      }
      Atomics.wait(w, W_STATE, v, open ? Math.max(left, 1) : 10);
    }
  }
}

/** An access the main thread is serving. */
interface Serving {
  /** Its claimed state word: it is still wanted while W_STATE holds this. */
  readonly claimed: number;
  readonly iova: number;
  readonly length: number;
  cancelled: number; // 0, or the errno it was cancelled with
}

/** An unmap the device has not taken yet: an access into its range comes from a translation made before it. */
interface PendingUnmap {
  readonly post: number;
  readonly iova: number;
  readonly end: number;
}

/** The main thread's side: serves the device's accesses through the owner's connection while one is set. */
export class RemoteDmaServer {
  readonly #w: Int32Array;
  readonly #data: Uint8Array;
  #peer: PeerDma | null = null;
  #closed = false;
  readonly #serving = new Set<Serving>();
  #unmaps: PendingUnmap[] = [];
  readonly #log: (message: string, err?: unknown) => void;

  /**
   * `covers`: whether the owner's maps (the front end's table) hold a range now. `untaken`: whether the device
   * has yet to take a mailbox post (MailboxCaller.untaken). `log`: rate limited by message (the detail goes in
   * `err`).
   */
  constructor(
    sab: SharedArrayBuffer,
    private readonly covers: (iova: number, length: number, write: boolean) => boolean,
    private readonly untaken: (post: number) => boolean,
    log: (message: string, err?: unknown) => void,
  ) {
    this.#w = new Int32Array(sab, 0, WORDS);
    this.#data = new Uint8Array(sab, WORDS * 4, REMOTE_CHUNK);
    this.#log = log;
    Atomics.store(this.#w, W_NO_OWNER, 1);
    void this.#serve();
  }

  /** The owner's DMA_READ/DMA_WRITE (null: no owner; accesses fail at once). */
  set peer(peer: PeerDma | null) {
    this.#peer = peer;
    Atomics.store(this.#w, W_NO_OWNER, peer === null ? 1 : 0);
    if (peer !== null) return;
    this.#cancel(() => true, 32); // EPIPE: the owner is gone
    Atomics.notify(this.#w, W_STATE); // a device waiting on an access not yet claimed gives it up
  }

  get peer(): PeerDma | null {
    return this.#peer;
  }

  /**
   * The owner unmapped [iova, iova+size) with post `post` (all: every map): an access into it fails now (§7:
   * it completes as IOMMU_FAULT), and until the device has taken the post, an access into the range comes
   * from a translation made before the unmap and is refused, whatever is mapped there since.
   */
  unmapped(post: number, iova: number, size: number, all: boolean): void {
    const end = all ? Number.POSITIVE_INFINITY : iova + size;
    const start = all ? 0 : iova;
    this.#pruneUnmaps();
    this.#unmaps.push({ post, iova: start, end });
    this.#cancel((s) => s.iova < end && s.iova + s.length > start, 14); // EFAULT
  }

  /**
   * The main thread waits (until `wait` settles) for the device to take post `post`, a command the owner waits
   * for too: a reset, bus mastering off, an unmap of memory the device maps. Meanwhile every access to the
   * owner fails at once, until the device has taken the post: QEMU serves no DMA_READ while it waits for its
   * own request's reply, so each would only wait out its deadline (and the reset's aborted completions each
   * one more). `wait` calls `posted` with the command's post number as soon as it is made.
   */
  async failFast<T>(wait: (posted: (post: number) => void) => Promise<T>): Promise<T> {
    const w = this.#w;
    let started = false;
    try {
      return await wait((post) => {
        Atomics.store(w, W_FAIL_UNTIL, post); // a later post of the same wait moves it on
        if (!started) Atomics.add(w, W_FAIL_FAST, 1);
        started = true;
        this.#cancel(() => true, 5); // EIO
        Atomics.notify(w, W_STATE);
      });
    } finally {
      if (started) Atomics.sub(w, W_FAIL_FAST, 1);
    }
  }

  close(): void {
    this.#closed = true;
    Atomics.store(this.#w, W_NO_OWNER, 1);
    this.#cancel(() => true, ENODEV);
    Atomics.notify(this.#w, W_STATE); // ends #serve's wait, and a device's wait on an unclaimed access
  }

  async #serve(): Promise<void> {
    const w = this.#w;
    while (!this.#closed) {
      const v = Atomics.load(w, W_STATE);
      if (stateOf(v) === ASKED) {
        // Claimed before its fields are read: the device gives up only an access not being served.
        const claimed = word(seqOf(v), SERVING);
        if (Atomics.compareExchange(w, W_STATE, v, claimed) === v) this.#start(claimed);
        continue;
      }
      const r = waitAsync(w, W_STATE, v);
      if (r.async) await r.value;
    }
  }

  #start(claimed: number): void {
    const w = this.#w;
    const op = Atomics.load(w, W_OP);
    const length = Atomics.load(w, W_LENGTH);
    const iova = Atomics.load(w, W_IOVA_LO) + Atomics.load(w, W_IOVA_HI) * 2 ** 32;
    const bytes = op === OP_WRITE ? this.#data.slice(0, length) : null;
    const s: Serving = { claimed, iova, length, cancelled: 0 };
    this.#serving.add(s);
    void this.#answer(s, op, bytes).finally(() => this.#serving.delete(s));
  }

  async #answer(s: Serving, op: number, bytes: Uint8Array | null): Promise<void> {
    const deadline = performance.now() + REMOTE_DMA_TIMEOUT_MS;
    let out: Uint8Array | null = null;
    let errno = 0;
    try {
      const peer = this.#peer;
      if (!peer) throw new VfioError('ENODEV', 'no owner to serve the DMA access');
      const most = Math.min(peer.maxTransfer, REMOTE_CHUNK);
      if (op === OP_READ) out = new Uint8Array(s.length);
      for (let done = 0; done < s.length; done += most) {
        const n = Math.min(most, s.length - done);
        const at = s.iova + done;
        this.#check(s, at, n, op === OP_WRITE);
        const left = Math.max(1, Math.ceil(deadline - performance.now()));
        if (out) out.set(await peer.read(BigInt(at), n, left), done);
        else await peer.write(BigInt(at), (bytes as Uint8Array).subarray(done, done + n), left);
      }
    } catch (err) {
      errno = s.cancelled || ((err as VfioError).errno ?? 5);
      if (!s.cancelled) {
        this.#log(
          `a device DMA ${op === OP_READ ? 'read' : 'write'} through the owner failed (an IOMMU fault)`,
          new Error(`${s.length} bytes at 0x${s.iova.toString(16)}: ${(err as Error).message}`),
        );
      }
    }
    this.#finish(s, s.cancelled || errno, out);
  }

  /** Before each message: the access is still wanted and its range still the owner's map it was. */
  #check(s: Serving, iova: number, length: number, write: boolean): void {
    if (s.cancelled) throw new VfioError('ECANCELED', 'the access was cancelled');
    if (Atomics.load(this.#w, W_STATE) !== s.claimed) {
      throw new VfioError('ECANCELED', 'the device gave the access up');
    }
    if (this.#staleRange(iova, length) || !this.covers(iova, length, write)) {
      s.cancelled = 14; // EFAULT: unmapped since the device translated it
      throw new VfioError('EFAULT', 'the range was unmapped');
    }
  }

  /** Whether [iova, +length) meets an unmap the device has not taken yet (it translated before the unmap). */
  #staleRange(iova: number, length: number): boolean {
    if (this.#unmaps.length === 0) return false;
    this.#pruneUnmaps();
    return this.#unmaps.some((u) => u.iova < iova + length && u.end > iova);
  }

  /** Forget the unmaps the device has taken. */
  #pruneUnmaps(): void {
    this.#unmaps = this.#unmaps.filter((u) => this.untaken(u.post));
  }

  /** Publish the answer to `s`, unless the device gave it up; idempotent. */
  #finish(s: Serving, errno: number, bytes: Uint8Array | null): void {
    const w = this.#w;
    const taken = word(seqOf(s.claimed), TAKEN);
    if (Atomics.compareExchange(w, W_STATE, s.claimed, taken) !== s.claimed) return;
    if (errno === 0 && bytes) this.#data.set(bytes);
    Atomics.store(w, W_ERRNO, errno);
    Atomics.store(w, W_STATE, word(seqOf(s.claimed), DONE));
    Atomics.notify(w, W_STATE);
  }

  /** Cancel the accesses being served that `which` names: each sends nothing more, and fails now. */
  #cancel(which: (s: Serving) => boolean, errno: number): void {
    for (const s of this.#serving) {
      if (s.cancelled || !which(s)) continue;
      s.cancelled = errno;
      this.#finish(s, errno, null);
    }
  }
}
