// The synchronous command channel between the vfio-user front-end (main
// thread) and the device (worker thread): one SharedArrayBuffer holding a
// state word, a command word, numeric arguments, a reply status and a data
// area for bulk payloads. The caller blocks in Atomics.wait (bounded), so an
// owner register access is answered only after the device acted on it; the
// device serves the mailbox between descriptors and sleeps on the state word
// when idle, so a command wakes it at once.
//
// fds travel as plain numbers (they are process-wide).
//
// Doorbell notification (datasheet rev 2): an idle device may sleep in
// waitFds() on its queues' ioeventfds instead of Atomics.wait. It then says
// so in W_FD_SLEEP, and a caller also writes the device's wake eventfd.

import { native } from '../sys/native.js';

export const STATE_IDLE = 0;
export const STATE_REQUEST = 1;
export const STATE_REPLY = 2;

// Int32 word indexes.
const W_STATE = 0;
const W_CMD = 1;
const W_ARGS = 2; // 4 words of u32 arguments
const W_STATUS = 6;
const W_LEN = 7;
/** Non-zero while the device sleeps in waitFds() (so a command must also write the wake eventfd). */
const W_FD_SLEEP = 8;
/** The device's wake eventfd (a process-wide fd number). */
const W_WAKE_FD = 9;
const HEADER_BYTES = 64;

/** Bulk data area: room for the largest REGION_READ/WRITE the server accepts (and JSON payloads). */
export const MAILBOX_DATA_BYTES = 1024 * 1024;

export const Cmd = {
  REGION_READ: 1,
  REGION_WRITE: 2,
  /** Everything that is not on the register hot path: a JSON request in the data area. */
  JSON: 3,
  /** Stop the device loop (served only between rounds, never inside one). */
  SHUTDOWN: 4,
} as const;

/** A failure reported by the device side: errno 0 means "not an errno" (a bug or a bad argument). */
export class MailboxError extends Error {
  constructor(
    message: string,
    readonly errno: number,
    readonly code: string,
  ) {
    super(message);
    this.name = 'MailboxError';
  }
}

export class Mailbox {
  readonly sab: SharedArrayBuffer;
  readonly words: Int32Array;
  readonly data: Uint8Array;

  constructor(sab = new SharedArrayBuffer(HEADER_BYTES + MAILBOX_DATA_BYTES)) {
    this.sab = sab;
    this.words = new Int32Array(sab, 0, HEADER_BYTES / 4);
    this.data = new Uint8Array(sab, HEADER_BYTES);
  }

  // ---- caller side (main thread) ----

  /**
   * Send one command and block until the device replies or `timeoutMs`
   * passes. Returns the reply's data (a copy). Throws MailboxError.
   */
  call(cmd: number, args: readonly number[], payload: Uint8Array | null, timeoutMs: number): Uint8Array {
    const w = this.words;
    const state = Atomics.load(w, W_STATE);
    // A late answer to a call that timed out is dropped; a command still unanswered blocks the channel.
    if (state === STATE_REPLY) Atomics.store(w, W_STATE, STATE_IDLE);
    else if (state !== STATE_IDLE) {
      throw new MailboxError('device channel is stuck (an earlier command timed out)', 5, 'EIO');
    }
    if (payload && payload.length > this.data.length) {
      throw new MailboxError(`payload of ${payload.length} bytes exceeds the mailbox`, 90, 'EMSGSIZE');
    }
    w[W_CMD] = cmd;
    for (let i = 0; i < 4; i++) w[W_ARGS + i] = (args[i] ?? 0) | 0;
    w[W_LEN] = payload ? payload.length : 0;
    if (payload) this.data.set(payload);
    Atomics.store(w, W_STATE, STATE_REQUEST);
    Atomics.notify(w, W_STATE);
    if (Atomics.load(w, W_FD_SLEEP) !== 0) native.eventfdWrite(Atomics.load(w, W_WAKE_FD), 1);
    const deadline = performance.now() + timeoutMs;
    while (Atomics.load(w, W_STATE) === STATE_REQUEST) {
      const left = deadline - performance.now();
      if (left <= 0) throw new MailboxError(`device did not answer within ${timeoutMs} ms`, 5, 'EIO');
      Atomics.wait(w, W_STATE, STATE_REQUEST, left);
    }
    const status = w[W_STATUS] as number;
    const len = w[W_LEN] as number;
    const reply = this.data.slice(0, len);
    Atomics.store(w, W_STATE, STATE_IDLE);
    if (status !== 0) {
      const { message, code } = JSON.parse(new TextDecoder().decode(reply)) as {
        message: string;
        code: string;
      };
      throw new MailboxError(message, Math.max(status, 0), code);
    }
    return reply;
  }

  /** JSON request/response on top of call(). */
  callJson<T>(request: unknown, timeoutMs: number): T {
    const reply = this.call(
      Cmd.JSON,
      [],
      new TextEncoder().encode(JSON.stringify(request, bigintReplacer)),
      timeoutMs,
    );
    return (reply.length ? JSON.parse(new TextDecoder().decode(reply), bigintReviver) : undefined) as T;
  }

  // ---- device side (worker) ----

  get pending(): boolean {
    return Atomics.load(this.words, W_STATE) === STATE_REQUEST;
  }

  /** Sleep until a command arrives or `ms` passes (the device's idle wait). */
  sleep(ms: number): void {
    // Sleep on whatever the state is now unless a command is waiting. Waiting only on IDLE would return at
    // once while our last reply is still unread (state REPLY), turning the idle device into a busy loop
    // that starves the thread that has to read that reply.
    const state = Atomics.load(this.words, W_STATE);
    if (state === STATE_REQUEST) return;
    Atomics.wait(this.words, W_STATE, state, ms);
  }

  /**
   * Sleep until a command arrives, one of `fds` (eventfds) is written, or `ms` passes; the readable
   * fds are drained. `fds[0]` is the device's own wake eventfd, which callers write while it sleeps here.
   */
  sleepOnFds(fds: number[], ms: number): void {
    const w = this.words;
    Atomics.store(w, W_WAKE_FD, fds[0] as number);
    Atomics.store(w, W_FD_SLEEP, 1);
    // A command posted before the flag was visible was not followed by a wake write: look once more.
    if (Atomics.load(w, W_STATE) !== STATE_REQUEST) native.waitFds(fds, ms);
    Atomics.store(w, W_FD_SLEEP, 0);
  }

  /** The pending command's number (valid while `pending`). */
  get pendingCmd(): number {
    return Atomics.load(this.words, W_CMD);
  }

  /** Read the pending command. */
  request(): { cmd: number; args: number[]; payload: Uint8Array } {
    const w = this.words;
    const args = [
      w[W_ARGS] as number,
      w[W_ARGS + 1] as number,
      w[W_ARGS + 2] as number,
      w[W_ARGS + 3] as number,
    ];
    return { cmd: w[W_CMD] as number, args, payload: this.data.subarray(0, w[W_LEN] as number) };
  }

  /** Answer the pending command with data (written into the data area). */
  reply(data: Uint8Array | null): void {
    if (data) this.data.set(data);
    this.#finish(0, data ? data.length : 0);
  }

  /** Answer the pending command with an error: errno > 0 for a refusal, 0 for a failure. */
  replyError(errno: number, code: string, message: string): void {
    const bytes = new TextEncoder().encode(JSON.stringify({ message, code }));
    this.data.set(bytes);
    this.#finish(errno > 0 ? errno : -1, bytes.length);
  }

  #finish(status: number, len: number): void {
    const w = this.words;
    w[W_STATUS] = status;
    w[W_LEN] = len;
    Atomics.store(w, W_STATE, STATE_REPLY);
    Atomics.notify(w, W_STATE);
  }
}

/** JSON with bigints: encoded as {"$big": "123"}. */
export function bigintReplacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? { $big: value.toString() } : value;
}
export function bigintReviver(_key: string, value: unknown): unknown {
  if (value && typeof value === 'object' && '$big' in value && Object.keys(value).length === 1) {
    return BigInt((value as { $big: string }).$big);
  }
  return value;
}
