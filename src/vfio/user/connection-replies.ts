// What a vfio-user connection sends back, and how much of it may wait: the reply side of connection.ts.
//
// Replies given in one turn of the event loop go at its end, together: those without fds in one sendmsg, one
// with fds alone (peers attribute fds by the sendmsg they came in), all in the order given. A request whose
// answer came from a promise — a device relay's reply, a request that waited for the grant — is answered in
// the same turn as the others its read or its device reply released, so the client is woken once for them,
// not once each; and a device command sent in that turn (the next pipelined request's relay) leaves before the
// replies, so the device, whose answer the client is waiting for, is woken first. Nothing waits for I/O: the
// turn's end is its microtasks' end (a nextTick queued from a microtask runs once they are drained).
//
// Flow control, so that a client costs the server a bounded amount whatever it does: reading stops while
// MAX_PENDING requests are queued, more than REPLY_HIGH_WATER reply bytes wait for the client to read them, or
// more than REPLY_FDS_HIGH_WATER fds wait to go with them (each a dup held open: a client that never reads,
// asking for a region's fd over and over in small replies, held ~13,000 of them before the bytes paused it),
// and resumes when all are back under. Requests already read still get their replies, so the backlog can pass
// the high-water mark by at most MAX_PENDING replies; past REPLY_HARD_LIMIT (a client that never reads) the
// connection is cut.
//
// While a command of the server's own (a model's DMA_READ/DMA_WRITE, peer-dma.ts) waits for its reply, reading
// is not paused but for hold(): that reply comes behind whatever the client sent before it, and a request being
// served — the one whose model waits for it — holds the queue until it comes (a client that pipelines 32
// requests behind a REGION_WRITE whose model reads its memory would otherwise wait for the command's deadline).
// What is read meanwhile is still bounded: past MAX_PENDING_AWAITING requests queued the connection is cut.
import type { Fd } from '../../sys/fd.js';
import { closeAll } from './request-replies.js';
import type { MessageSocket } from './transport.js';

export const MAX_PENDING = 32;
export const REPLY_HIGH_WATER = 1 << 20;
export const REPLY_HARD_LIMIT = 8 << 20;
export const REPLY_FDS_HIGH_WATER = 64;
/** Requests queued while a server command awaits its reply, past which the client is cut off. */
export const MAX_PENDING_AWAITING = 4 * MAX_PENDING;

/** A socket that can join messages without fds into one sendmsg (StreamSocket). */
type Batching = { batch<T>(fn: () => T): T };

interface Held {
  data: Uint8Array;
  /** Sent with the reply, then closed (owned here from send()). */
  fds: Fd[] | undefined;
}

export class ConnectionReplies {
  readonly #socket: MessageSocket & Partial<Batching>;
  /** Requests read and not yet answered (the connection's request order). */
  readonly #pending: () => number;
  /** Commands of the server's own wait for their replies: reading goes on (see above). */
  readonly #awaiting: () => boolean;
  /** The connection must end: a send failed, or the client does not read its replies. */
  readonly #cut: (reason: string, logLine?: string) => void;
  #held: Held[] = [];
  #flushQueued = false;
  #closed = false;
  /** Reading stopped whatever flow control says (a broker upgrade's quiesce: hold()). */
  holding = false;

  constructor(
    socket: MessageSocket,
    pending: () => number,
    awaiting: () => boolean,
    cut: (reason: string, logLine?: string) => void,
  ) {
    this.#socket = socket as MessageSocket & Partial<Batching>;
    this.#pending = pending;
    this.#awaiting = awaiting;
    this.#cut = cut;
  }

  /**
   * Sends a reply (taking `fds`: closed once sent or dropped). `now`: a request served at once while one read
   * is delivered (the socket's corkReads already joins those) goes now, unless replies of this turn wait.
   */
  send(data: Uint8Array, fds: Fd[] | undefined, now: boolean): void {
    if (this.#closed) {
      if (fds) closeAll(fds);
      return;
    }
    if (now && this.#held.length === 0) {
      try {
        this.#write(data, fds);
      } finally {
        if (fds) closeAll(fds);
      }
      this.flowControl();
      return;
    }
    this.#held.push({ data, fds });
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      process.nextTick(() => this.flush());
    }
  }

  /** Sends what this turn's replies hold, in order (idempotent; a connection's close and idle() call it too). */
  flush(): void {
    this.#flushQueued = false;
    if (this.#held.length === 0) return;
    const held = this.#held;
    this.#held = [];
    let next = 0;
    const sendAll = (): void => {
      for (; next < held.length; next++) {
        const h = held[next]!;
        try {
          if (!this.#closed) this.#write(h.data, h.fds);
        } finally {
          if (h.fds) closeAll(h.fds);
        }
      }
    };
    try {
      if (this.#socket.batch) this.#socket.batch(sendAll);
      else sendAll();
    } catch (err) {
      // batch() refused to start: the socket was closed directly in this turn (a session's hang-up closes its
      // socket, not the connection), before its 'close' event reached the connection. This runs from
      // process.nextTick, where a throw would end the process: the replies are dropped, their fds closed.
      for (; next < held.length; next++) if (held[next]!.fds) closeAll(held[next]!.fds!);
      if (!this.#closed) {
        this.#closed = true;
        this.#cut(`send failed: ${(err as Error).message}`);
      }
      return;
    }
    this.flowControl();
  }

  /** After the connection's close: nothing more is sent; what is held is dropped, its fds closed. */
  close(): void {
    this.#closed = true;
    for (const h of this.#held.splice(0)) if (h.fds) closeAll(h.fds);
  }

  #write(data: Uint8Array, fds: Fd[] | undefined): void {
    try {
      this.#socket.send(data, fds);
    } catch (err) {
      this.#closed = true;
      this.#cut(`send failed: ${(err as Error).message}`);
    }
  }

  flowControl(): void {
    if (this.#closed) return;
    const backlog = this.#socket.queuedBytes;
    if (backlog > REPLY_HARD_LIMIT) {
      this.#closed = true;
      this.#cut(
        'client does not read its replies',
        `${backlog} reply bytes unread by the client; closing it`,
      );
      return;
    }
    const awaiting = this.#awaiting();
    if (awaiting && this.#pending() > MAX_PENDING_AWAITING) {
      this.#closed = true;
      this.#cut(
        'client sent too many requests while the server awaited its reply',
        `${this.#pending()} requests queued while a DMA command awaits the client's reply; closing it`,
      );
      return;
    }
    const full =
      this.holding ||
      (!awaiting &&
        (this.#pending() >= MAX_PENDING ||
          backlog > REPLY_HIGH_WATER ||
          (this.#socket.queuedFds ?? 0) > REPLY_FDS_HIGH_WATER));
    if (full) this.#socket.pause();
    else this.#socket.resume();
  }
}
