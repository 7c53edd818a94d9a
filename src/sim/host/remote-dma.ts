// Device DMA into owner memory that came without an fd (datasheet rev 2 §7): the device thread reaches it
// through VFIO_USER_DMA_READ/DMA_WRITE messages to the owner, which only the main thread can send and
// receive (it owns the connection). The two meet in a small shared area: the device writes one access (op,
// IOVA, length, and a write's bytes) and blocks on the state word; the main thread, woken by
// Atomics.waitAsync on that word, sends the message through the connection's PeerDma, copies a read's bytes
// in, and publishes the outcome. One access at a time (the device thread is one thread); an access larger
// than the area or than the owner's max_data_xfer_size goes in pieces.
//
// The state word carries a sequence number with the state, so that an access the device gave up on (its
// deadline passed) is never answered into the next one: each side moves the word only with a
// compare-exchange from the exact value it saw.
//
// Correct, and slow: each access is a message round trip through the main thread. The owner's memory that
// came with an fd is mapped and never goes through here.

import { VfioError } from '../../errors.js';
import { waitAsync } from '../../util/wait-async.js';
import type { PeerDma } from '../../vfio/user/peer-dma.js';
import type { RemoteMemory } from '../model/iommu.js';

/** Bytes one access of the device carries at most (larger ones go in pieces). */
export const REMOTE_CHUNK = 1 << 20;
/**
 * Bytes one DMA_READ/DMA_WRITE message carries at most (and at most the owner's max_data_xfer_size). QEMU
 * 11.1 advertises 1 MiB, but a DMA_READ reply of more than about 214 KiB stalls in its socket and never
 * completes (observed: its non-blocking write is not resumed), which kills its device; 64 KiB is well clear.
 */
export const REMOTE_MESSAGE_MAX = 64 * 1024;
/**
 * How long the main thread gives the owner to answer one DMA_READ/DMA_WRITE. Below QEMU's own per-message
 * deadline (5 s): an owner command the device answers only after such an access must still be answered in
 * QEMU's time, since QEMU treats a reply after its deadline as a broken connection.
 */
export const REMOTE_DMA_TIMEOUT_MS = 2_000;
/** How long the device waits for the main thread's answer: the owner's deadline and a margin. */
const DEVICE_WAIT_MS = REMOTE_DMA_TIMEOUT_MS + 1_000;

// Words of the control area.
const W_STATE = 0; // (seq << 3) | state
const W_OP = 1;
const W_LENGTH = 2;
const W_ERRNO = 3;
const W_IOVA_LO = 4;
const W_IOVA_HI = 5;
/** 1 while no owner can serve an access: the device fails one at once, without waiting on the main thread. */
const W_NO_OWNER = 6;
const WORDS = 8;

// States (low 3 bits of W_STATE).
const IDLE = 0;
const ASKED = 1; // the device wrote an access and waits
const TAKEN = 2; // the main thread is filling in the answer
const DONE = 3; // answered: W_ERRNO 0, or the errno
const ABANDONED = 4; // the device's deadline passed first

const OP_READ = 1;
const OP_WRITE = 2;

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

  constructor(sab: SharedArrayBuffer) {
    this.#w = new Int32Array(sab, 0, WORDS);
    this.#data = new Uint8Array(sab, WORDS * 4, REMOTE_CHUNK);
  }

  read(iova: number, into: Uint8Array): number {
    for (let done = 0; done < into.length; ) {
      const n = Math.min(REMOTE_CHUNK, into.length - done);
      const errno = this.#access(OP_READ, iova + done, n);
      if (errno !== 0) return iova + done;
      into.set(this.#data.subarray(0, n), done);
      done += n;
    }
    return -1;
  }

  write(iova: number, data: Uint8Array): number {
    for (let done = 0; done < data.length; ) {
      const n = Math.min(REMOTE_CHUNK, data.length - done);
      this.#data.set(data.subarray(done, done + n));
      const errno = this.#access(OP_WRITE, iova + done, n);
      if (errno !== 0) return iova + done;
      done += n;
    }
    return -1;
  }

  /** One access of at most REMOTE_CHUNK bytes: 0, or the errno it failed with. */
  #access(op: number, iova: number, length: number): number {
    const w = this.#w;
    this.accesses++;
    // The owner left (or none came): the main thread may be blocked on this thread right now (the owner's
    // disconnect), so it is not asked.
    if (Atomics.load(w, W_NO_OWNER) !== 0) {
      this.failures++;
      return 19; // ENODEV
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
      const left = deadline - performance.now();
      // The owner left while this waited (its disconnect notifies this word), or the deadline passed: give
      // up, unless the main thread took the access this instant (then its answer is moments away).
      const gone = Atomics.load(w, W_NO_OWNER) !== 0;
      if (v === asked && (gone || left <= 0)) {
        if (Atomics.compareExchange(w, W_STATE, asked, word(seq, ABANDONED)) === asked) {
          this.failures++;
          return gone ? 19 : 110; // ENODEV, ETIMEDOUT
        }
        continue;
      }
      Atomics.wait(w, W_STATE, v, v === asked ? left : 10);
    }
  }
}

/** The main thread's side: serves the device's accesses through the owner's connection while one is set. */
export class RemoteDmaServer {
  readonly #w: Int32Array;
  readonly #data: Uint8Array;
  #peer: PeerDma | null = null;
  #closed = false;
  /** The access being served: its word and range, so an unmap or a disconnect can fail it at once. */
  #current: { asked: number; iova: number; length: number } | null = null;
  #log: (message: string, err?: unknown) => void;

  /**
   * `covers`: whether the owner's maps (the front end's table) hold a range now; an access outside them is
   * refused here, so none reaches the owner after the unmap that took its range was answered.
   * `log`: rate limited by message (the error's detail goes in `err`).
   */
  constructor(
    sab: SharedArrayBuffer,
    private readonly covers: (iova: number, length: number, write: boolean) => boolean,
    log: (message: string, err?: unknown) => void,
  ) {
    this.#w = new Int32Array(sab, 0, WORDS);
    this.#data = new Uint8Array(sab, WORDS * 4, REMOTE_CHUNK);
    this.#log = log;
    Atomics.store(this.#w, W_NO_OWNER, 1);
    void this.#serve();
  }

  /** The owner's DMA_READ/DMA_WRITE (null: no owner; accesses fail ENODEV). */
  set peer(peer: PeerDma | null) {
    this.#peer = peer;
    Atomics.store(this.#w, W_NO_OWNER, peer === null ? 1 : 0);
    if (peer !== null) return;
    this.#failCurrent(32); // EPIPE: the owner is gone
    Atomics.notify(this.#w, W_STATE); // a device waiting on an access not yet taken gives it up
  }

  get peer(): PeerDma | null {
    return this.#peer;
  }

  /** The owner unmapped [iova, iova+size): an access into it fails now (§7: it completes as IOMMU_FAULT). */
  unmapped(iova: number, size: number, all: boolean): void {
    const c = this.#current;
    if (c && (all || (c.iova < iova + size && c.iova + c.length > iova))) this.#failCurrent(14); // EFAULT
  }

  /** The access being made fails now (EIO): a device reset, or bus mastering off, ends it anyway. */
  abort(): void {
    this.#failCurrent(5);
  }

  close(): void {
    this.#closed = true;
    Atomics.store(this.#w, W_NO_OWNER, 1);
    this.#failCurrent(19); // ENODEV
    Atomics.notify(this.#w, W_STATE); // ends #serve's wait
  }

  async #serve(): Promise<void> {
    const w = this.#w;
    while (!this.#closed) {
      const v = Atomics.load(w, W_STATE);
      if (stateOf(v) !== ASKED || this.#current?.asked === v) {
        const r = waitAsync(w, W_STATE, v);
        if (r.async) await r.value;
        continue;
      }
      const length = Atomics.load(w, W_LENGTH);
      const iova = Atomics.load(w, W_IOVA_LO) + Atomics.load(w, W_IOVA_HI) * 2 ** 32;
      const op = Atomics.load(w, W_OP);
      this.#current = { asked: v, iova, length };
      // Not awaited: an unmap or a disconnect can fail it meanwhile (#failCurrent), and the loop then waits
      // for the device's next access.
      void this.#answer(v, op, iova, length);
      const r = waitAsync(w, W_STATE, v);
      if (r.async) await r.value;
    }
  }

  async #answer(asked: number, op: number, iova: number, length: number): Promise<void> {
    let errno = 0;
    let bytes: Uint8Array | null = null;
    const peer = this.#peer;
    try {
      if (!peer) throw new VfioError('ENODEV', 'no owner to serve the DMA access');
      if (!this.covers(iova, length, op === OP_WRITE)) {
        this.#finish(asked, 14, null); // EFAULT: unmapped since the device translated it
        return;
      }
      if (op === OP_READ) bytes = await this.#read(peer, iova, length);
      else await this.#write(peer, iova, this.#data.slice(0, length));
    } catch (err) {
      errno = (err as VfioError).errno ?? 5;
      this.#log(
        `a device DMA ${op === OP_READ ? 'read' : 'write'} through the owner failed (an IOMMU fault)`,
        new Error(`${length} bytes at 0x${iova.toString(16)}: ${(err as Error).message}`),
      );
    }
    this.#finish(asked, errno, bytes);
  }

  async #read(peer: PeerDma, iova: number, length: number): Promise<Uint8Array> {
    const most = Math.min(peer.maxTransfer, REMOTE_MESSAGE_MAX);
    if (length <= most) return peer.read(BigInt(iova), length, REMOTE_DMA_TIMEOUT_MS);
    const out = new Uint8Array(length);
    for (let done = 0; done < length; done += most) {
      const n = Math.min(most, length - done);
      out.set(await peer.read(BigInt(iova + done), n, REMOTE_DMA_TIMEOUT_MS), done);
    }
    return out;
  }

  async #write(peer: PeerDma, iova: number, data: Uint8Array): Promise<void> {
    const most = Math.min(peer.maxTransfer, REMOTE_MESSAGE_MAX);
    for (let done = 0; done < data.length; done += most) {
      const n = Math.min(most, data.length - done);
      await peer.write(BigInt(iova + done), data.subarray(done, done + n), REMOTE_DMA_TIMEOUT_MS);
    }
  }

  /** Publish the answer to access `asked`, unless the device gave up on it or it was failed already. */
  #finish(asked: number, errno: number, bytes: Uint8Array | null): void {
    const w = this.#w;
    if (this.#current?.asked === asked) this.#current = null;
    const taken = word(seqOf(asked), TAKEN);
    if (Atomics.compareExchange(w, W_STATE, asked, taken) !== asked) return; // abandoned, or failed before
    if (errno === 0 && bytes) this.#data.set(bytes.subarray(0, Atomics.load(w, W_LENGTH)));
    Atomics.store(w, W_ERRNO, errno);
    Atomics.store(w, W_STATE, word(seqOf(asked), DONE));
    Atomics.notify(w, W_STATE);
  }

  #failCurrent(errno: number): void {
    const c = this.#current;
    if (c) this.#finish(c.asked, errno, null);
  }
}

export const REMOTE_IDLE = IDLE;
