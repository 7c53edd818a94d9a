// The device's side of the simulator's command channel (the worker thread):
// takes the front end's posts from the ring in order, answers requests,
// publishes how far it got (W_SEEN, W_TAKEN) and the engine epoch, and
// sleeps on the request word or on its fds. The protocol is in mailbox.ts.

import { type MessagePort, receiveMessageOnPort } from 'node:worker_threads';
import { native } from '../../sys/native.js';
import type { Envelope, Reply } from './mailbox.js';
import {
  R_BYTES,
  R_NOTHING,
  R_PORT,
  REPLY_AT,
  REPLY_BYTES,
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

/** The device's side (worker thread). */
export class MailboxDevice<R> {
  readonly #words: Int32Array;
  #seen = 0;
  /** A post taken and put back (putBack): the next take() returns it first. */
  #held: Envelope<R> | null = null;

  readonly #slots: SlotViews;
  readonly #reply: Uint8Array;

  constructor(
    sab: SharedArrayBuffer,
    private readonly port: MessagePort,
    private readonly codec: SlotCodec<R>,
  ) {
    this.#words = new Int32Array(sab, 0, WORDS);
    this.#slots = new SlotViews(sab);
    this.#reply = new Uint8Array(sab, REPLY_AT, REPLY_BYTES);
  }

  /** A request was posted that has not been taken yet. */
  get pending(): boolean {
    return this.#held !== null || Atomics.load(this.#words, W_REQUEST) !== this.#seen;
  }

  /** Return a taken post, to be taken again first (a look at the head of the ring that must not act on it). */
  putBack(env: Envelope<R>): void {
    this.#held = env;
  }

  /** The next request, or null when none is waiting. */
  take(): Envelope<R> | null {
    const held = this.#held;
    if (held) {
      this.#held = null;
      return held;
    }
    const w = this.#words;
    if (Atomics.load(w, W_REQUEST) === this.#seen) return null;
    const n = (this.#seen + 1) | 0;
    const at = slotAt(n);
    const slots = this.#slots;
    const op = slots.op(at);
    const seq = slots.seq(at);
    if (slots.n(at) !== n) throw new Error(`mailbox slot for post ${n} holds post ${slots.n(at)}`);
    let req: R;
    if (op !== 0) req = this.codec.decode(op, this.#slots, at);
    else {
      const got = receiveMessageOnPort(this.port);
      // The caller posts to the port before it publishes the slot: never.
      if (!got) throw new Error(`post ${n} is on the port but the port is empty`);
      req = got.message as R;
    }
    // Copied out: the caller may write the slot again.
    this.#seen = n;
    Atomics.store(w, W_SEEN, n);
    if (Atomics.load(w, W_SLOT_WAITER) !== 0) Atomics.notify(w, W_SEEN);
    return { seq, n, req };
  }

  /** The front end handed out the kick fds (GET_REGION_IO_FDS). */
  get kicksHandedOut(): boolean {
    return Atomics.load(this.#words, W_KICKS_OUT) !== 0;
  }

  /** The number of the last post acted on. */
  get lastTaken(): number {
    return Atomics.load(this.#words, W_TAKEN);
  }

  /** Posts up to `n` are acted on: a front end waiting in quiesce() may go on. */
  taken(n: number): void {
    const w = this.#words;
    Atomics.store(w, W_TAKEN, n);
    if (Atomics.load(w, W_EPOCH_WAITER) !== 0) {
      Atomics.add(w, W_EPOCH, 2); // same parity: still in the round, but the waiter must look again
      Atomics.notify(w, W_EPOCH);
    }
  }

  /** Entering a round (before looking for posts): from here the device may touch mapped memory. */
  enterRound(): void {
    Atomics.add(this.#words, W_EPOCH, 1);
  }

  /** Round over: nothing mapped is in use until the next enterRound(). */
  leaveRound(): void {
    const w = this.#words;
    Atomics.add(w, W_EPOCH, 1);
    if (Atomics.load(w, W_EPOCH_WAITER) !== 0) Atomics.notify(w, W_EPOCH);
  }

  /** Answer request `seq` and wake the caller: nothing or a few bytes in shared memory, the rest on the port. */
  answer(seq: number, reply: Omit<Reply, 'seq'>): void {
    const w = this.#words;
    const v = reply.value;
    if (reply.error === undefined && v === undefined) {
      Atomics.store(w, W_REPLY_KIND, R_NOTHING);
    } else if (reply.error === undefined && v instanceof Uint8Array && v.length <= REPLY_BYTES) {
      this.#reply.set(v);
      Atomics.store(w, W_REPLY_LEN, v.length);
      Atomics.store(w, W_REPLY_KIND, R_BYTES);
    } else {
      this.port.postMessage({ seq, ...reply } satisfies Reply);
      Atomics.store(w, W_REPLY_KIND, R_PORT);
    }
    Atomics.store(w, W_REPLY_SEQ, seq);
    Atomics.store(w, W_ANSWERED, seq);
    Atomics.notify(w, W_ANSWERED);
  }

  /** Sleep until a request is posted or `ms` passes (the device's idle wait; Infinity: until a request). */
  sleep(ms: number): void {
    Atomics.wait(this.#words, W_REQUEST, this.#seen, ms);
  }

  /**
   * Sleep until a request is posted, one of the set's eventfds is written, or `ms` passes; the readable
   * ones are drained. `set.epfd` is a native wait set (waitSetCreate) holding `set.wakeFd`, the device's own
   * wake eventfd, which callers write while it sleeps here.
   * Returns false when it slept the whole `ms` (no fd was written, nothing was pending).
   */
  sleepOnFds(set: WaitSet, ms: number): boolean {
    const w = this.#words;
    Atomics.store(w, W_WAKE_FD, set.wakeFd);
    Atomics.store(w, W_FD_SLEEP, 1);
    // A request posted before the flag was visible was not followed by a wake write: look once more.
    const woken = this.pending || native.waitSet(set.epfd, ms) > 0;
    Atomics.store(w, W_FD_SLEEP, 0);
    return woken;
  }
}

/** What the device sleeps on when kick fds are out (MailboxDevice.sleepOnFds). */
export interface WaitSet {
  /** The native wait set (an epoll fd) of `wakeFd` and the kick fds. */
  epfd: number;
  /** The device's own wake eventfd, which the front end writes when a command arrives while it sleeps. */
  wakeFd: number;
  kickFds: number[];
}

/**
 * The device's wake eventfd and one wait set of it and the queues' kick fds (which the device owns from here).
 * Each is tracked for the worker's teardown: a terminate() runs no shutdown, and the addon closes them then.
 */
export function openWaitSet(kickFds: number[]): WaitSet {
  const { EFD_NONBLOCK } = native.constants as Record<string, number>;
  for (const fd of kickFds) native.trackFd(fd);
  const wakeFd = native.eventfd(0, EFD_NONBLOCK as number);
  native.trackFd(wakeFd);
  const epfd = native.waitSetCreate([wakeFd, ...kickFds]);
  native.trackFd(epfd);
  return { epfd, wakeFd, kickFds };
}

/**
 * The device stops: the wait set first. An eventfd closed while still in the set stays registered as long as a
 * lease holds a dup of it, and a drain would read whatever file took its number next.
 */
export function closeWaitSet(set: WaitSet): void {
  for (const fd of [set.epfd, set.wakeFd, ...set.kickFds]) {
    native.untrackFd(fd);
    native.close(fd);
  }
}
