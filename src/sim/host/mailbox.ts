// The command channel between the simulator's front end (main thread) and
// its device worker, for the owner commands the device itself must act on
// (register accesses are answered from the shared register file and never
// come here; see frontend.ts). This file is the caller's side; the device's
// side is mailbox-device.ts, the shared layout and words mailbox-ring.ts.
//
// Requests sit in a ring of fixed slots in shared memory (an op number and a
// few numeric fields, encoded by a SlotCodec: command-slots.ts; the layout
// is mailbox-ring.ts), and replies in a reply area (nothing, or up to
// REPLY_BYTES bytes): no structured clone and no MessagePort wake-up for
// the commands of a lease's life (issue 16). The port stays for what is
// rare or cannot be numbers (a DMA map's shared buffer, an injection,
// stats, a refusal with its reason): such a slot says "on the port", and
// the port keeps the slots' order. The caller fills a slot, bumps the
// request word and notifies it, then blocks in Atomics.wait (a futex wait,
// bounded) on the answer word. The device never returns to its event loop:
// it checks the request word between descriptors, sleeps on it when idle
// (so a command wakes it at once), and copies each slot out before it
// publishes it free (W_SEEN). The ring is bounded: a caller that finds it
// full (a device asleep through SLOTS one-way posts) wakes the device and
// waits, bounded, for it to take some.
//
// fds travel as plain numbers (they are process-wide).
//
// One-way posts (post()) share the ring, so the device takes them in order
// with requests: table updates the front end has already validated and
// answered (DMA_MAP of a memfd, DMA_UNMAP). The device applies each before
// its next access to guest memory. The engine epoch (W_EPOCH, odd while the
// device is inside a round, where it may be touching mapped memory) lets
// the front end wait only when the device may be using what it just took
// away: until the device has taken the post (W_TAKEN) or left the round.
//
// Doorbell notification (datasheet rev 2): an idle device may sleep in
// waitSet() on its queues' ioeventfds instead of Atomics.wait. It says so in
// W_FD_SLEEP, and a caller that sees it set after posting also writes the
// device's wake eventfd (W_WAKE_FD), so a request still wakes it at once.

import { type MessagePort, receiveMessageOnPort } from 'node:worker_threads';
import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';
import { waitAsync } from '../../util/wait-async.js';
import {
  MEMORY_BYTES,
  R_BYTES,
  R_NOTHING,
  REPLY_AT,
  REPLY_BYTES,
  SLOTS,
  type SlotCodec,
  SlotViews,
  slotAt,
  W_ANSWERED,
  W_EPOCH,
  W_EPOCH_WAITER,
  W_FD_SLEEP,
  W_KICKS_OUT,
  W_REPLY_KIND,
  W_REPLY_LEN,
  W_REPLY_SEQ,
  W_REQUEST,
  W_SEEN,
  W_SLOT_WAITER,
  W_TAKEN,
  W_WAKE_FD,
  WORDS,
} from './mailbox-ring.js';

/** A request as taken. `seq` 0: a one-way post (no answer). `n`: its number among all posts. */
export interface Envelope<R> {
  seq: number;
  n: number;
  req: R;
}

/** A refusal as it crosses the threads: the errno name and number and the reason, as fields. */
export interface WireError {
  code: string;
  errno: number;
  reason: string;
}

/** A reply: the value, or the error. */
export interface Reply {
  seq: number;
  value?: unknown;
  error?: WireError;
}

export const newMailboxMemory = (): SharedArrayBuffer => new SharedArrayBuffer(MEMORY_BYTES);

/** The caller's side (main thread). */
export class MailboxCaller<R> {
  readonly #words: Int32Array;
  readonly #slots: SlotViews;
  readonly #reply: Uint8Array;
  /** Requests posted (answers are counted against it). */
  #seq = 0;
  /** Posts of either kind (the request word). */
  #posts = 0;
  /** The callAsync() waiting for its answer, settled; null when none. */
  #asyncCall: Promise<void> | null = null;

  /** `fullWaitMs`: how long a post waits for a free slot before it fails with EIO. */
  constructor(
    sab: SharedArrayBuffer,
    private readonly port: MessagePort,
    private readonly codec: SlotCodec<R>,
    private readonly fullWaitMs = 10_000,
  ) {
    this.#words = new Int32Array(sab, 0, WORDS);
    this.#slots = new SlotViews(sab);
    this.#reply = new Uint8Array(sab, REPLY_AT, REPLY_BYTES);
  }

  /**
   * Post one request and block until the device answers it or `timeoutMs`
   * passes. Returns the reply's value; throws the device's refusal as a
   * VfioError, or EIO when the device does not answer in time.
   */
  call<T>(req: R, timeoutMs: number): T {
    const seq = this.#start(req);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const seen = this.#unanswered(seq, deadline, timeoutMs);
      if (seen === null) return this.#answer<T>(seq);
      Atomics.wait(this.#words, W_ANSWERED, seen, deadline - performance.now());
    }
  }

  /**
   * call(), waiting without blocking this thread (Atomics.waitAsync): for when the device may itself be
   * waiting on this thread (an access to owner memory without an fd, remote-dma.ts), which a blocked thread
   * would never serve. Slower to wake than call(). One at a time: a callAsync() made while others are in
   * flight or waiting is posted once those have settled, either way (so they go in order, and its timeout
   * runs from its own post); a call() made meanwhile fails with EBUSY (DeviceWorker.#command goes async
   * instead); one-way posts go on as ever.
   */
  callAsync<T>(req: R, timeoutMs: number, posted?: (post: number) => void): Promise<T> {
    // One at a time: a second waits for the first (the connection serves one such command at a time anyway).
    const ahead = this.#asyncCall;
    if (ahead) return ahead.then(() => this.callAsync<T>(req, timeoutMs, posted));
    let seq: number;
    try {
      seq = this.#start(req);
    } catch (err) {
      return Promise.reject(err);
    }
    posted?.(this.#posts);
    const call = this.#waitAnswer<T>(seq, timeoutMs);
    const settled = call.then(
      () => {},
      () => {},
    );
    this.#asyncCall = settled;
    void settled.then(() => {
      if (this.#asyncCall === settled) this.#asyncCall = null;
    });
    return call;
  }

  /** The number of the last post (requests and one-way posts count alike). */
  get posts(): number {
    return this.#posts;
  }

  /** How many posts the device has taken (requests and one-way posts, in order). */
  taken(): number {
    return Atomics.load(this.#words, W_TAKEN);
  }

  /**
   * Whether post `n` is still waiting for the device. Post numbers are int32 counters: one more than a ring's
   * worth of posts old is taken, whatever the wrap says (the ring holds at most SLOTS untaken).
   */
  untaken(n: number): boolean {
    return ((this.taken() - n) | 0) < 0 && ((this.#posts - n) | 0) <= SLOTS;
  }

  /** The callAsync() in flight, settled (never rejects); null when none. */
  get inFlight(): Promise<void> | null {
    return this.#asyncCall;
  }

  async #waitAnswer<T>(seq: number, timeoutMs: number): Promise<T> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const seen = this.#unanswered(seq, deadline, timeoutMs);
      if (seen === null) return this.#answer<T>(seq);
      const r = waitAsync(this.#words, W_ANSWERED, seen, deadline - performance.now());
      if (r.async) await r.value;
    }
  }

  /** The answer word while request `seq` is unanswered (to wait on); null once answered; EIO past `deadline`. */
  #unanswered(seq: number, deadline: number, timeoutMs: number): number | null {
    const answered = Atomics.load(this.#words, W_ANSWERED);
    if (answered === seq) return null;
    const left = deadline - performance.now();
    if (left <= 0) throw new VfioError('EIO', `device did not answer within ${timeoutMs} ms`);
    return answered;
  }

  /** Post request `req` and return its number, or throw when the channel cannot take it now. */
  #start(req: R): number {
    const w = this.#words;
    if (this.#asyncCall) throw new VfioError('EBUSY', 'a device command is in flight (waiting on the owner)');
    // One request at a time: an earlier one that timed out and is still unanswered blocks the channel.
    if (Atomics.load(w, W_ANSWERED) !== this.#seq) {
      throw new VfioError('EIO', 'device channel is stuck (an earlier command timed out)');
    }
    // Room first: a full ring that stays full throws here, before this request counts as posted.
    this.makeRoom();
    this.#seq = (this.#seq + 1) | 0;
    const seq = this.#seq;
    this.#send(seq, req);
    return seq;
  }

  /** Request `seq`'s answer, once W_ANSWERED says it was given. */
  #answer<T>(seq: number): T {
    const w = this.#words;
    const kind = Atomics.load(w, W_REPLY_KIND);
    if (Atomics.load(w, W_REPLY_SEQ) !== seq) throw new Error(`device answered ${seq} with another reply`);
    if (kind === R_NOTHING) return undefined as T;
    if (kind === R_BYTES) return this.#reply.slice(0, Atomics.load(w, W_REPLY_LEN)) as T;
    // On the port. Replies to requests that timed out earlier were answered late; they are dropped here.
    for (;;) {
      const got = receiveMessageOnPort(this.port);
      if (!got) throw new Error(`device answered request ${seq} but its reply is not on the port`);
      const reply = got.message as Reply;
      if (reply.seq !== seq) continue;
      if (reply.error) {
        const e = reply.error;
        throw new VfioError(e.code, e.reason, e.errno);
      }
      return reply.value as T;
    }
  }

  /** The kick fds were handed out: from now on the idle device sleeps on them (W_KICKS_OUT; false takes it back). */
  kicksHandedOut(out = true): void {
    Atomics.store(this.#words, W_KICKS_OUT, out ? 1 : 0);
  }

  /**
   * Post a one-way request: the device acts on it before anything posted after it, and before its next
   * access to guest memory. Returns its number. `wake` false (a DMA table update): a sleeping device is
   * left asleep; it takes the post when it next wakes (a doorbell, a kick, its poll, a request, a full
   * ring), before it touches memory. Waking a thread costs the caller its core on a loaded machine.
   */
  post(req: R, wake = true): number {
    return this.#send(0, req, wake);
  }

  /**
   * Post a one-way request, leaving a device that sleeps on its fds (W_FD_SLEEP) asleep: it takes the post
   * when it next wakes (a kick, its armed poll interval, a request), before that round. A device not asleep
   * on its fds — awake, or asleep on the request word, which no kick ends — is woken as by post(). Returns
   * whether the device was left asleep. Sequentially consistent against sleepOnFds as #send is: either the
   * device sees the post before it sleeps, or this sees it asleep.
   */
  postLeavingFdSleep(req: R): boolean {
    const w = this.#words;
    this.#write(0, req);
    if (Atomics.load(w, W_FD_SLEEP) !== 0) return true;
    Atomics.notify(w, W_REQUEST);
    return false;
  }

  #send(seq: number, req: R, wake = true): number {
    const n = this.#write(seq, req);
    if (!wake) return n;
    this.#wake();
    return n;
  }

  #wake(): void {
    const w = this.#words;
    Atomics.notify(w, W_REQUEST);
    // Sequentially consistent against sleepOnFds: it stores W_FD_SLEEP then loads W_REQUEST, we store
    // W_REQUEST then load W_FD_SLEEP, so either it sees the request or we see it asleep on fds.
    if (Atomics.load(w, W_FD_SLEEP) !== 0) native.eventfdWrite(Atomics.load(w, W_WAKE_FD), 1);
  }

  /**
   * Make sure the next `posts` posts have free slots, waiting (bounded) for the device to take some; EIO
   * when it takes none in `fullWaitMs` (a device stuck in a fault injection's stall, or wedged). A caller
   * that changes its own state before posting calls this first, so a full ring fails it with nothing
   * changed: its posts then cannot fail (this thread is the only writer).
   */
  makeRoom(posts = 1): void {
    const n = (this.#posts + posts) | 0;
    if (((n - Atomics.load(this.#words, W_SEEN)) | 0) > SLOTS) this.#waitForSlot(n);
  }

  /** Write post `seq` (0: one-way) into the next slot and publish it (W_REQUEST). Returns its number. */
  #write(seq: number, req: R): number {
    const w = this.#words;
    this.makeRoom();
    const n = (this.#posts + 1) | 0;
    const at = slotAt(n);
    const op = this.codec.encode(req, this.#slots, at);
    if (op === 0) this.port.postMessage(req);
    this.#slots.label(at, op, seq, n);
    this.#posts = n;
    Atomics.store(w, W_REQUEST, n);
    return n;
  }

  /** The ring is full (a device asleep through SLOTS one-way posts): wake it until it frees post n's slot. */
  #waitForSlot(n: number): void {
    const w = this.#words;
    const deadline = performance.now() + this.fullWaitMs;
    for (;;) {
      const seen = Atomics.load(w, W_SEEN);
      if (((n - seen) | 0) <= SLOTS) return;
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new VfioError(
          'EIO',
          `device took none of its ${SLOTS} waiting commands in ${this.fullWaitMs} ms`,
        );
      }
      Atomics.store(w, W_SLOT_WAITER, 1);
      this.#wake();
      Atomics.wait(w, W_SEEN, seen, Math.min(left, 1));
      Atomics.store(w, W_SLOT_WAITER, 0);
    }
  }

  /**
   * Wait until the device cannot be using what post `n` took away: it has taken the post, or it is outside
   * a round (its next round takes every pending post before touching memory). No wait at all when the
   * device is idle. Throws EIO past `timeoutMs`.
   */
  quiesce(n: number, timeoutMs: number): void {
    const w = this.#words;
    const deadline = performance.now() + timeoutMs;
    let spins = 0;
    // Set before looking (sequentially consistent against the device's load of it after W_TAKEN moves):
    // either the device sees a waiter and moves W_EPOCH, or we see W_TAKEN.
    Atomics.store(w, W_EPOCH_WAITER, 1);
    try {
      for (;;) {
        const epoch = this.#roundWith(n);
        if (epoch === null) return;
        const left = deadline - performance.now();
        if (left <= 0) throw new VfioError('EIO', `device did not leave its round within ${timeoutMs} ms`);
        // A spinning device takes posts between descriptors within microseconds: spin a little first.
        if (++spins < 200) continue;
        Atomics.wait(w, W_EPOCH, epoch, Math.min(left, 1));
      }
    } finally {
      Atomics.store(w, W_EPOCH_WAITER, 0);
    }
  }

  /** The epoch of the round the device may still be using what post `n` took away in; null once it cannot. */
  #roundWith(n: number): number | null {
    const w = this.#words;
    const epoch = Atomics.load(w, W_EPOCH);
    return (epoch & 1) === 0 || ((Atomics.load(w, W_TAKEN) - n) | 0) >= 0 ? null : epoch;
  }

  /** quiesce() without blocking this thread (see callAsync). */
  async quiesceAsync(n: number, timeoutMs: number): Promise<void> {
    const w = this.#words;
    const deadline = performance.now() + timeoutMs;
    Atomics.store(w, W_EPOCH_WAITER, 1);
    try {
      for (;;) {
        const epoch = this.#roundWith(n);
        if (epoch === null) return;
        const left = deadline - performance.now();
        if (left <= 0) throw new VfioError('EIO', `device did not leave its round within ${timeoutMs} ms`);
        const r = waitAsync(w, W_EPOCH, epoch, Math.min(left, 1));
        if (r.async) await r.value;
      }
    } finally {
      Atomics.store(w, W_EPOCH_WAITER, 0);
    }
  }
}
