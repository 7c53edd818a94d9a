// The request/reply machinery under VfioUserClient: msg_id allocation,
// matching replies to requests (so calls may be pipelined), per-call
// timeouts, and failing every pending call at once when the connection ends.
// Timeouts: each call has its deadline; one timer per channel is due at the
// earliest (re-armed only when a call with an earlier deadline comes), and
// when it fires it fails the calls past theirs and re-arms for the next — a
// call costs no timer of its own to set and clear. With no call pending the
// timer is unref'd: it does not keep the process alive.
// Server-to-client commands (DMA_READ/DMA_WRITE) go to the client's handler,
// one at a time in arrival order, with their replies bounded: channel-commands.ts.
import { EventEmitter } from 'node:events';
import { errnoName, ProtocolError, VfioUserCallError, vfioUserError } from '../../errors.js';
import { monotonicMs } from '../../sys/clock.js';
import type { Fd } from '../../sys/fd.js';
import { type CommandHandler, ServerCommands } from './channel-commands.js';
import { decodeMessage, encodeCommand, errorReason, isError, isReply } from './codec.js';
import { replyFdsLost } from './fds-lost.js';
import * as P from './protocol.js';
import type { MessageSocket, ReceivedRecord } from './transport.js';

export type { CommandHandler } from './channel-commands.js';

export type FdLike = Fd | number;

export interface CallOptions {
  timeoutMs?: number;
  /** Send with No_reply: the call resolves once sent; errors are not reported. */
  noReply?: boolean;
}

export interface ReplyMessage {
  payload: Uint8Array;
  /** fds that came with the reply: the caller owns them. */
  fds: Fd[];
}

interface Pending {
  command: number;
  resolve(r: ReplyMessage): void;
  reject(err: Error): void;
  /** monotonicMs() past which the call fails with ETIMEDOUT. */
  deadline: number;
  timeoutMs: number;
}

/** setTimeout's longest delay: a later deadline is re-checked then. */
const MAX_TIMER_MS = 0x7fff_ffff;

/**
 * Timed-out calls whose msg_id is kept out of use for a late reply: one more closes the connection. An id is
 * freed only by its reply (reused earlier, a late reply would answer the new call); a server that never sends
 * them used to take ids for good, until every call failed EAGAIN. A sixteenth of the id space: a server that
 * leaves this many calls unanswered past their deadlines is not answering.
 */
export const MAX_ABANDONED_IDS = 4096;

export class RequestChannel extends EventEmitter {
  #socket: MessageSocket;
  #timeoutMs: number;
  #pending = new Map<number, Pending>();
  /** msg_ids whose call timed out: their late replies are dropped, not treated as strays. */
  #abandoned = new Set<number>();
  /** resync() in progress: a reply to an unknown msg_id is another process's, dropped. */
  #resyncing = 0;
  #nextId = 0;
  #closed = false;
  /** Due at (or before) the earliest deadline of the pending calls; unref'd while none is pending, null once fired. */
  #timer: NodeJS.Timeout | null = null;
  #timerDue = Number.POSITIVE_INFINITY;
  /** Server-to-client commands: served in arrival order, their replies bounded. */
  readonly #commands: ServerCommands;
  /**
   * The server accepted devlease "error_reason" in its VERSION reply: error payloads are reason text.
   * Until then (and with any other server) an error reply's payload is ignored — the spec's error reply is
   * the header alone, and libvfio-user's carry unrelated bytes — except on VERSION's own error reply,
   * which answers the proposal that asked for reasons (a devlease broker says there why it refused a lease).
   */
  errorReasons = false;

  constructor(socket: MessageSocket, timeoutMs: number, serve: CommandHandler | null = null) {
    super();
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#commands = new ServerCommands(socket, serve, {
      closed: () => this.#closed,
      fail: (err) => this.fail(err),
      shutdown: (err) => this.#shutdown(err),
      refused: (err, msg) => this.emit('commandRefused', err, msg),
    });
    socket.on('message', (m) => this.#receive(m));
    socket.on('drain', () => this.#commands.drained());
    socket.on('error', (err) => this.#shutdown(err));
    socket.on('close', () => {
      // Our own close() (every lease's end) closed it: no error to build (its stack trace was ~45 µs of a
      // client's CPU per lease, issue 16's sixth pass), #shutdown would drop it.
      if (this.#closed) return;
      const n = this.#pending.size;
      const pending = n ? ` with ${n} call(s) pending` : '';
      this.#shutdown(vfioUserError('ECONNRESET', `vfio-user server closed the connection${pending}`));
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Calls waiting for their reply (a handover waits for none to be left). */
  /** Server-to-client commands received and not answered yet. */
  get commandsWaiting(): number {
    return this.#commands.waiting;
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Where the msg_id sequence is, and the ids whose late replies are still to be dropped (a handover's). */
  sequence(): { nextId: number; abandoned: number[] } {
    return { nextId: this.#nextId, abandoned: [...this.#abandoned] };
  }

  /**
   * Another process used this connection and is gone (an upgrade's new broker, rolled back): replies to its
   * requests may still come, to msg_ids this channel never sent. Its ids came after `nextId`, so this
   * channel's jump half the id space past them; replies to ids it does not know are dropped until `probe` — a
   * request of its own, which the server answers after everything sent before it — is answered.
   */
  async resync(probe: () => Promise<unknown>): Promise<void> {
    this.#nextId = (this.#nextId + 0x8000) & 0xffff;
    this.#resyncing++;
    try {
      await probe();
    } finally {
      this.#resyncing--;
    }
  }

  /** Carry on another process's sequence over the same connection (see sequence()). */
  continueSequence(s: { nextId: number; abandoned: number[] }): void {
    this.#nextId = s.nextId & 0xffff;
    for (const id of s.abandoned) this.#abandoned.add(id & 0xffff);
  }

  /**
   * Send one command and wait for its reply. Resolves with the reply payload and any
   * fds (the caller owns them); rejects with the server's errno, ETIMEDOUT or ECONNRESET.
   */
  request(
    command: number,
    payload?: Uint8Array,
    fds: FdLike[] = [],
    opts: CallOptions = {},
  ): Promise<ReplyMessage> {
    const name = P.commandName(command);
    if (this.#closed) {
      return Promise.reject(vfioUserError('ECONNRESET', `${name}: vfio-user connection is closed`, name));
    }
    const msgId = this.#allocateId();
    const data = encodeCommand(msgId, command, payload, opts.noReply);
    if (opts.noReply) {
      try {
        this.#socket.send(data, fds);
        return Promise.resolve({ payload: new Uint8Array(0), fds: [] });
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
      const deadline = monotonicMs() + timeoutMs;
      this.#pending.set(msgId, { command, resolve, reject, deadline, timeoutMs });
      try {
        this.#socket.send(data, fds);
      } catch (err) {
        this.#pending.delete(msgId);
        reject(err);
        return;
      }
      if (deadline < this.#timerDue) this.#armTimer(deadline);
      else if (this.#pending.size === 1) this.#timer?.ref(); // left armed, unref'd, by the last reply
    });
  }

  /**
   * Runs `fn`, and the requests it sends without fds go to the server in one sendmsg when it returns (on a
   * socket that can join them, StreamSocket.batch; else one each): one wake-up of the server for the lot.
   * Each request keeps its own deadline and reply; order on the wire is the order of the calls.
   */
  batch<T>(fn: () => T): T {
    const socket = this.#socket as MessageSocket & { batch?<R>(f: () => R): R; closed?: boolean };
    if (this.#closed || typeof socket.batch !== 'function' || socket.closed) return fn();
    return socket.batch(fn);
  }

  #armTimer(due: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerDue = due;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, Math.ceil(due - monotonicMs())));
    this.#timer = setTimeout(() => this.#expire(), delay);
  }

  /** Fails the calls past their deadline; re-arms for the earliest one left. */
  #expire(): void {
    this.#timer = null;
    this.#timerDue = Number.POSITIVE_INFINITY;
    const now = monotonicMs();
    let next = Number.POSITIVE_INFINITY;
    for (const [msgId, p] of this.#pending) {
      if (p.deadline <= now) {
        this.#pending.delete(msgId);
        this.#abandoned.add(msgId);
        const name = P.commandName(p.command);
        p.reject(vfioUserError('ETIMEDOUT', `${name}: no reply within ${p.timeoutMs} ms`, name));
      } else if (p.deadline < next) {
        next = p.deadline;
      }
    }
    if (this.#abandoned.size > MAX_ABANDONED_IDS) {
      this.#shutdown(
        vfioUserError(
          'ETIMEDOUT',
          `vfio-user server left ${this.#abandoned.size} timed-out calls unanswered (at most ${MAX_ABANDONED_IDS} may wait for a late reply): connection closed`,
        ),
      );
      return;
    }
    if (next !== Number.POSITIVE_INFINITY && !this.#closed) this.#armTimer(next);
  }

  #allocateId(): number {
    for (let i = 0; i < 0x10000; i++) {
      const id = this.#nextId;
      this.#nextId = (this.#nextId + 1) & 0xffff;
      if (!this.#pending.has(id) && !this.#abandoned.has(id)) return id;
    }
    throw vfioUserError('EAGAIN', 'all 65536 vfio-user message ids are in flight');
  }

  #receive(rec: ReceivedRecord): void {
    if (this.#closed) {
      closeAll(rec.fds);
      return;
    }
    try {
      if (rec.truncated) throw new ProtocolError('message larger than the receive buffer');
      if (rec.ctruncated) throw new ProtocolError('message carried more fds than max_msg_fds');
      const msg = decodeMessage(rec.data);
      // fds this process could not take (its fd table full): the message is whole, and fails alone.
      const lost = rec.fdsLost ?? null;
      if (!isReply(msg)) {
        const fdCount = rec.fds.length;
        closeAll(rec.fds);
        this.#commands.receive(msg, fdCount, lost !== null);
        return;
      }
      const pending = this.#pending.get(msg.msgId);
      if (!pending) {
        closeAll(rec.fds);
        if (this.#abandoned.delete(msg.msgId) || this.#resyncing > 0) return;
        throw new ProtocolError(`reply to unknown msg_id ${msg.msgId} (${P.commandName(msg.command)})`);
      }
      if (pending.command !== msg.command) {
        closeAll(rec.fds);
        throw new ProtocolError(
          `reply to msg_id ${msg.msgId} is for ${P.commandName(msg.command)}, sent ${P.commandName(pending.command)}`,
        );
      }
      this.#pending.delete(msg.msgId);
      // Nothing pending: the timer stays armed (no clear and set again per call) but holds the process no more
      // than the calls did, each of whose timers used to be cleared with its reply.
      if (this.#pending.size === 0) this.#timer?.unref();
      if (isError(msg)) {
        closeAll(rec.fds);
        const name = P.commandName(msg.command);
        const code = msg.errorNo ? errnoName(msg.errorNo) : 'EIO';
        const reason =
          this.errorReasons || msg.command === P.VFIO_USER_VERSION ? errorReason(msg) : undefined;
        const err = new VfioUserCallError(
          code,
          `${name} failed: ${code} (errno ${msg.errorNo})${reason ? `: ${reason}` : ''}`,
          { command: name, errno: msg.errorNo, reason: reason || undefined },
        );
        pending.reject(err);
      } else if (lost !== null) {
        pending.reject(replyFdsLost(msg.command, lost));
      } else {
        pending.resolve({ payload: msg.payload, fds: rec.fds });
      }
    } catch (err) {
      closeAll(rec.fds);
      this.fail(err as Error);
    }
  }

  /** The server broke the protocol: close, and fail everything pending with that error (returned). */
  fail(err: Error): Error {
    const e =
      err instanceof ProtocolError
        ? vfioUserError('EPROTO', `vfio-user protocol error: ${err.message}`)
        : err;
    this.#shutdown(e);
    return e;
  }

  #shutdown(err: Error | null): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#socket.close();
    } catch {
      // already closed
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    this.#abandoned.clear();
    this.#commands.drained();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    for (const p of pending) {
      const e = new VfioUserCallError(
        (err as { code?: string } | null)?.code ?? 'ERR_DEVLEASE_CLOSED',
        `${P.commandName(p.command)}: ${err?.message ?? 'client closed'}`,
        {
          command: P.commandName(p.command),
          errno: (err as { errno?: number } | null)?.errno,
          cause: err ?? undefined,
        },
      );
      p.reject(e);
    }
    this.emit('close', err);
  }

  /** Close (idempotent). Pending calls reject with ERR_DEVLEASE_CLOSED; 'close' is emitted with null. */
  close(): void {
    this.#shutdown(null);
  }
}

function closeAll(fds: readonly Fd[]): void {
  for (const fd of fds) fd.close();
}
