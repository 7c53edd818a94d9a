// The writing half of a StreamSocket (stream-socket.ts; stream-reader.ts is the reading half).
//
// send() never blocks. What the kernel does not take at once (partial write or a full buffer) is queued and
// written in order when writable; the fds go with the first bytes written, exactly once. Corking
// (cork()/uncork()): messages without fds sent meanwhile are joined and go in one sendmsg at uncork (or once
// CORK_LIMIT bytes wait), so pipelined messages wake the peer once, not once each. A message with fds flushes
// what is corked first and goes in its own sendmsg: peers (QEMU, libvfio-user, stream-reader.ts) attribute
// fds by the sendmsg they came in.

import { closedError, isSysError } from '../errors.js';
import { type Fd, fdNumber, receivedCopy } from './fd.js';
import { native } from './native.js';

/** Corked bytes past which they are sent without waiting for uncork (the bound on what corking holds). */
export const CORK_LIMIT = 64 * 1024;

const PEER_GONE = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

interface Queued {
  data: Uint8Array;
  /** dup()s of the fds still to send with the first bytes; empty once they went. */
  fds: Fd[];
}

/** What the writer asks of its socket. */
export interface WriterHooks {
  /** The peer is gone (EPIPE, ECONNRESET, ENOTCONN): the socket closes. */
  hangUp(): void;
  /** A queued write failed otherwise: the socket fails with `err`. */
  fail(err: unknown): void;
  /** Whether bytes wait (`waiting`) changed or may have: poll for writability accordingly. */
  updateEvents(): void;
  /** Everything queued is written ('drain'). */
  drained(): void;
}

export class StreamWriter {
  /** The socket's descriptor number (the socket owns it); -1 once dropped. */
  #fd: number;
  readonly #hooks: WriterHooks;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  /** Dups held for queued bytes (each an open file: counted by the owner's flow control, as bytes are). */
  #queuedFds = 0;
  #corkDepth = 0;
  /** What was sent while corked, joined: the first #corkedBytes bytes (reused; grows up to CORK_LIMIT). */
  #corkBuf: Buffer | null = null;
  #corkedBytes = 0;

  constructor(fd: number, hooks: WriterHooks) {
    this.#fd = fd;
    this.#hooks = hooks;
  }

  /** Bytes waiting for buffer space. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Descriptors held for queued bytes, to go with them. */
  get queuedFds(): number {
    return this.#queuedFds;
  }

  /** Bytes wait for the socket to be writable. */
  get waiting(): boolean {
    return this.#queue.length > 0;
  }

  /** Sends a checked message (see StreamSocket.send), joining it to the corked ones when it can. */
  send(data: Uint8Array, fds: readonly (Fd | number)[]): void {
    if (this.#corkDepth > 0) {
      if (fds.length === 0 && data.length <= CORK_LIMIT) {
        if (this.#corkedBytes + data.length > CORK_LIMIT) {
          this.#sendCorked();
          if (this.#fd < 0) throw closedError('socket');
        }
        this.#joinCorked(data);
        return;
      }
      // A message with fds goes in its own sendmsg (a large one alone too), after what was corked before it.
      this.#sendCorked();
      if (this.#fd < 0) throw closedError('socket');
    }
    this.#write(data, fds);
  }

  cork(): void {
    this.#corkDepth++;
  }

  /** Ends a cork(): the outermost sends what was corked (its errors close the socket, as a queued write's do). */
  uncork(): void {
    if (this.#corkDepth === 0) return;
    if (--this.#corkDepth === 0) this.#sendCorked();
  }

  #joinCorked(data: Uint8Array): void {
    const need = this.#corkedBytes + data.length;
    if (this.#corkBuf === null || this.#corkBuf.length < need) {
      const grown = Buffer.allocUnsafe(
        Math.min(CORK_LIMIT, Math.max(need, 2 * (this.#corkBuf?.length ?? 512))),
      );
      if (this.#corkBuf) this.#corkBuf.copy(grown, 0, 0, this.#corkedBytes);
      this.#corkBuf = grown;
    }
    this.#corkBuf.set(data, this.#corkedBytes);
    this.#corkedBytes = need;
  }

  #sendCorked(): void {
    const n = this.#corkedBytes;
    if (n === 0 || this.#fd < 0) return;
    this.#corkedBytes = 0;
    const data = this.#corkBuf!.subarray(0, n);
    try {
      this.#write(data, []);
    } catch (err) {
      // Nobody to throw to (the sends returned). A peer gone: as a queued write's failure. Else (a transient
      // ENOMEM, ENOBUFS) the bytes wait in the write queue and are tried again when writable; a queued write
      // that fails then closes the socket as before.
      if (isSysError(err) && PEER_GONE.has(err.code)) {
        this.#hooks.hangUp();
        return;
      }
      this.#queue.push({ data: Buffer.from(data), fds: [] });
      this.#queuedBytes += n;
      this.#hooks.updateEvents();
    }
  }

  /** One sendmsg now if nothing is queued; what the kernel does not take is queued (a copy: `data` may be reused). */
  #write(data: Uint8Array, fds: readonly (Fd | number)[]): void {
    let sent = 0;
    if (this.#queue.length === 0) {
      sent = Math.max(0, native.sendmsg(this.#fd, data, fds.length === 0 ? [] : fds.map(fdNumber)));
      if (sent === data.length) return;
    }
    // The fds went with the first bytes if any were written; else they wait with the data.
    const dups: Fd[] = [];
    if (sent === 0) {
      try {
        // Whose they are is not known here (a relayed client's fd, often): closed as a received one would be,
        // counted against the uid that sent it if it is an Fd that knows.
        for (const f of fds) dups.push(receivedCopy(f));
      } catch (err) {
        for (const d of dups) d.close();
        throw err;
      }
    }
    const rest = Buffer.from(data.subarray(sent));
    this.#queue.push({ data: rest, fds: dups });
    this.#queuedBytes += rest.length;
    this.#queuedFds += dups.length;
    this.#hooks.updateEvents();
  }

  /** The socket is writable: write what is queued, in order, as far as the kernel takes it. */
  flush(): void {
    while (this.#fd >= 0 && this.#queue.length > 0) {
      const m = this.#queue[0]!;
      let sent: number;
      try {
        sent = native.sendmsg(
          this.#fd,
          m.data,
          m.fds.map((d) => d.fd),
        );
      } catch (err) {
        if (isSysError(err) && PEER_GONE.has(err.code)) this.#hooks.hangUp();
        else this.#hooks.fail(err);
        return;
      }
      if (sent <= 0) break;
      this.#queuedFds -= m.fds.length;
      for (const d of m.fds.splice(0)) d.close();
      this.#queuedBytes -= sent;
      if (sent < m.data.length) {
        m.data = m.data.subarray(sent);
        break;
      }
      this.#queue.shift();
    }
    this.#hooks.updateEvents();
    if (this.#fd >= 0 && this.#queue.length === 0) this.#hooks.drained();
  }

  /**
   * At close: what was sent while corked goes now if the kernel takes it (uncorked, it would have gone already:
   * a reply then close() must still reach the peer); nothing after it, and nothing waits for it.
   */
  sendCorkedAtClose(): void {
    if (this.#fd >= 0 && this.#corkedBytes > 0 && this.#queue.length === 0) {
      try {
        native.sendmsg(this.#fd, this.#corkBuf!.subarray(0, this.#corkedBytes), []);
      } catch {
        // dropped with the rest, as unsent data is
      }
    }
  }

  /** The socket closed: unsent data and the fds held for it go. Idempotent. */
  drop(): void {
    this.#fd = -1;
    for (const m of this.#queue.splice(0)) for (const d of m.fds) d.close();
    this.#queuedBytes = 0;
    this.#queuedFds = 0;
    this.#corkedBytes = 0;
    this.#corkBuf = null;
  }
}
