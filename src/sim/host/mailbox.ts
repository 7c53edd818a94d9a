// The command channel between the simulator's front end (main thread) and
// its device worker, for the owner commands the device itself must act on
// (register accesses are answered from the shared register file and never
// come here; see frontend.ts).
//
// Requests and replies are structured-clone messages on a MessagePort pair
// (bigints and bytes travel as they are); the only shared memory is two
// sequence words used for wake-ups. The caller posts a request, bumps the
// request word and notifies it, then blocks in Atomics.wait (a futex wait,
// bounded) on the answer word and takes the reply synchronously with
// receiveMessageOnPort. The device never returns to its event loop: it
// checks the request word between descriptors, sleeps on it when idle (so a
// command wakes it at once), and takes requests with receiveMessageOnPort.
//
// fds travel as plain numbers (they are process-wide).
//
// Doorbell notification (datasheet rev 2): an idle device may sleep in
// waitFds() on its queues' ioeventfds instead of Atomics.wait. It says so in
// W_FD_SLEEP, and a caller that sees it set after posting also writes the
// device's wake eventfd (W_WAKE_FD), so a request still wakes it at once.

import { type MessagePort, receiveMessageOnPort } from 'node:worker_threads';
import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';

// Int32 word indexes.
const W_REQUEST = 0; // sequence number of the last request posted
const W_ANSWERED = 1; // sequence number of the last request answered
/** Non-zero while the device sleeps in waitFds() (so a request must also write the wake eventfd). */
const W_FD_SLEEP = 2;
/** The device's wake eventfd (a process-wide fd number). */
const W_WAKE_FD = 3;
const WORDS = 4;

/** A request on the wire. */
export interface Envelope<R> {
  seq: number;
  req: R;
}

/** A refusal as it crosses the threads: the errno name and number and the reason, as fields. */
export interface WireError {
  code: string;
  errno: number;
  reason: string;
}

/** A reply on the wire: the value, or the error. */
export interface Reply {
  seq: number;
  value?: unknown;
  error?: WireError;
}

export const newMailboxMemory = (): SharedArrayBuffer => new SharedArrayBuffer(WORDS * 4);

/** The caller's side (main thread). */
export class MailboxCaller<R> {
  readonly #words: Int32Array;
  #seq = 0;

  constructor(
    sab: SharedArrayBuffer,
    private readonly port: MessagePort,
  ) {
    this.#words = new Int32Array(sab);
  }

  /**
   * Post one request and block until the device answers it or `timeoutMs`
   * passes. Returns the reply's value; throws the device's refusal as a
   * VfioError, or EIO when the device does not answer in time.
   */
  call<T>(req: R, timeoutMs: number): T {
    const w = this.#words;
    // One request at a time: an earlier one that timed out and is still unanswered blocks the channel.
    if (Atomics.load(w, W_ANSWERED) !== this.#seq) {
      throw new VfioError('EIO', 'device channel is stuck (an earlier command timed out)');
    }
    this.#seq = (this.#seq + 1) | 0;
    const seq = this.#seq;
    this.port.postMessage({ seq, req } satisfies Envelope<R>);
    Atomics.store(w, W_REQUEST, seq);
    Atomics.notify(w, W_REQUEST);
    // Sequentially consistent against sleepOnFds: it stores W_FD_SLEEP then loads W_REQUEST, we store
    // W_REQUEST then load W_FD_SLEEP, so either it sees the request or we see it asleep on fds.
    if (Atomics.load(w, W_FD_SLEEP) !== 0) native.eventfdWrite(Atomics.load(w, W_WAKE_FD), 1);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const answered = Atomics.load(w, W_ANSWERED);
      if (answered === seq) break;
      const left = deadline - performance.now();
      if (left <= 0) throw new VfioError('EIO', `device did not answer within ${timeoutMs} ms`);
      Atomics.wait(w, W_ANSWERED, answered, left);
    }
    // Replies to requests that timed out earlier were answered late; they are dropped here.
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
}

/** The device's side (worker thread). */
export class MailboxDevice<R> {
  readonly #words: Int32Array;
  #seen = 0;

  constructor(
    sab: SharedArrayBuffer,
    private readonly port: MessagePort,
  ) {
    this.#words = new Int32Array(sab);
  }

  /** A request was posted that has not been taken yet. */
  get pending(): boolean {
    return Atomics.load(this.#words, W_REQUEST) !== this.#seen;
  }

  /** The next request, or null when none is waiting. */
  take(): Envelope<R> | null {
    const got = receiveMessageOnPort(this.port);
    if (!got) {
      // The request word moved before the message could be seen: never, as the caller posts first.
      this.#seen = Atomics.load(this.#words, W_REQUEST);
      return null;
    }
    const env = got.message as Envelope<R>;
    this.#seen = env.seq;
    return env;
  }

  /** Answer request `seq` and wake the caller. */
  answer(seq: number, reply: Omit<Reply, 'seq'>): void {
    this.port.postMessage({ seq, ...reply } satisfies Reply);
    Atomics.store(this.#words, W_ANSWERED, seq);
    Atomics.notify(this.#words, W_ANSWERED);
  }

  /** Sleep until a request is posted or `ms` passes (the device's idle wait; Infinity: until a request). */
  sleep(ms: number): void {
    Atomics.wait(this.#words, W_REQUEST, this.#seen, ms);
  }

  /**
   * Sleep until a request is posted, one of `fds` (eventfds) is written, or `ms` passes; the readable
   * fds are drained. `fds[0]` is the device's own wake eventfd, which callers write while it sleeps here.
   */
  sleepOnFds(fds: number[], ms: number): void {
    const w = this.#words;
    Atomics.store(w, W_WAKE_FD, fds[0] as number);
    Atomics.store(w, W_FD_SLEEP, 1);
    // A request posted before the flag was visible was not followed by a wake write: look once more.
    if (!this.pending) native.waitFds(fds, ms);
    Atomics.store(w, W_FD_SLEEP, 0);
  }
}
