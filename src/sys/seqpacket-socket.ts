// A connected AF_UNIX SOCK_SEQPACKET socket: whole messages with up to
// MAX_FDS descriptors each, driven by uv_poll (no threads, no blocking).
// devlease's own admin protocol uses it; the vfio-user wire is SOCK_STREAM
// (stream-socket.ts), as its other implementations speak it.
//
// Ownership:
// - send(): the caller keeps its fds. The kernel takes its own references
//   when the message is sent; a message that has to wait for buffer space is
//   queued with dup()s of the fds, closed once sent (or when the socket closes).
// - 'message': the listener owns msg.fds and must close them. Reading pauses
//   while there is no 'message' listener, so nothing is dropped or leaked in
//   between; if the last listener is removed in the middle of a batch, the
//   message it leaves unhandled has its fds closed.
// - Flow control: pause() stops reading (the peer's messages wait in the
//   kernel, which bounds them); queuedBytes says how much waits to be sent,
//   'drain' when all of it has gone. A server bounds what a peer that never
//   reads costs it with these (src/broker/admin.ts).
// - close() / peer hang-up: 'close' is emitted exactly once.

import { EventEmitter } from 'node:events';
import { closedError, isSysError, misuse } from '../errors.js';
import { Fd, fdNumber, RECEIVED, receivedCopy } from './fd.js';
import { MAX_FDS, native, type PeerCred } from './native.js';
import { peerCredOf, peerGroupsOf, peerPidfdOf } from './peer.js';
import type { PidFd } from './pidfd.js';
import { DISCONNECT, READABLE, Watch, WRITABLE } from './watch.js';

export interface SeqpacketMessage {
  data: Buffer;
  /** Received descriptors, owned by the receiver. */
  fds: Fd[];
  /** The message was longer than maxMessage and was cut. */
  truncated: boolean;
  /** More fds came than the receiver takes (maxFds); the extra ones were closed. */
  ctruncated: boolean;
}

export interface SeqpacketSocketOptions {
  /** Receive buffer size: longer messages arrive cut, with `truncated`. Default 1 MiB + 4 KiB. */
  maxMessage?: number;
  /** Most fds taken from one message (0..MAX_FDS, default MAX_FDS); extra ones are closed, with `ctruncated`. */
  maxFds?: number;
}

interface Queued {
  data: Buffer;
  fds: Fd[];
}

/** Messages read per readiness callback before yielding to the loop. */
const READ_BATCH = 64;
const PEER_GONE = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

function checkOptions(opts: SeqpacketSocketOptions): { maxMessage: number; maxFds: number } {
  const maxMessage = opts.maxMessage ?? 1024 * 1024 + 4096;
  const maxFds = opts.maxFds ?? MAX_FDS;
  if (!Number.isInteger(maxMessage) || maxMessage < 1 || maxMessage > 64 * 1024 * 1024) {
    throw misuse(
      'ERR_DEVLEASE_INVALID_ARG',
      `maxMessage must be an integer in [1, 64 MiB], got ${maxMessage}`,
    );
  }
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > MAX_FDS) {
    throw misuse('ERR_DEVLEASE_INVALID_ARG', `maxFds must be an integer in [0, ${MAX_FDS}], got ${maxFds}`);
  }
  return { maxMessage, maxFds };
}

export class SeqpacketSocket extends EventEmitter {
  readonly maxMessage: number;
  readonly maxFds: number;
  #fd: Fd | null;
  #watch: Watch;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  #paused = false;
  /** Whether a 'message' listener exists, i.e. whether we read at all. */
  #reading = false;
  #closeEmitted = false;

  /** Connects to a listening socket; throws ENOENT / ECONNREFUSED (with `code`) synchronously. */
  static connect(path: string, opts: SeqpacketSocketOptions = {}): SeqpacketSocket {
    checkOptions(opts);
    return new SeqpacketSocket(new Fd(native.unixConnect(path, false)), opts);
  }

  /** Two connected sockets (socketpair). */
  static pair(opts: SeqpacketSocketOptions = {}): [SeqpacketSocket, SeqpacketSocket] {
    checkOptions(opts);
    const [a, b] = native.unixPair(false);
    const fdB = new Fd(b);
    let first: SeqpacketSocket;
    try {
      first = new SeqpacketSocket(new Fd(a), opts);
    } catch (err) {
      fdB.close();
      throw err;
    }
    try {
      return [first, new SeqpacketSocket(fdB, opts)];
    } catch (err) {
      first.close();
      throw err;
    }
  }

  /** Adopts a connected, non-blocking seqpacket socket (takes ownership of `fd`, closing it if opts are invalid). */
  constructor(fd: Fd, opts: SeqpacketSocketOptions = {}) {
    super();
    try {
      const limits = checkOptions(opts);
      this.maxMessage = limits.maxMessage;
      this.maxFds = limits.maxFds;
      this.#watch = new Watch(fd.fd, DISCONNECT, (status, events) => this.#onReady(status, events));
    } catch (err) {
      fd.close();
      throw err;
    }
    this.#fd = fd;
    this.on('newListener', (event) => {
      if (event === 'message') this.#setInterest(true);
    });
    this.on('removeListener', (event) => {
      if (event === 'message') this.#setInterest(this.listenerCount('message') > 0);
    });
  }

  get closed(): boolean {
    return this.#fd === null;
  }

  /** The socket's descriptor (still owned by this socket). */
  get fd(): Fd {
    if (this.#fd === null) throw closedError('socket');
    return this.#fd;
  }

  /**
   * Sends one message with up to MAX_FDS descriptors. Never blocks: when the
   * socket buffer is full the message is queued (data copied, fds dup'd) and
   * sent in order when writable. Throws synchronously on misuse and on
   * errors of the immediate attempt (EPIPE if the peer is gone, EMSGSIZE).
   * A queued message that meets a gone peer later is dropped with the queue
   * and the socket closes ('close').
   */
  send(data: Uint8Array, fds: readonly (Fd | number)[] = []): void {
    const fd = this.fd.fd;
    if (!(data instanceof Uint8Array)) throw misuse('ERR_DEVLEASE_INVALID_ARG', 'data must be a Uint8Array');
    if (fds.length > MAX_FDS) {
      throw misuse(
        'ERR_DEVLEASE_TOO_MANY_FDS',
        `a message carries at most ${MAX_FDS} fds, got ${fds.length}`,
      );
    }
    const numbers = fds.map(fdNumber);
    if (data.length === 0 && numbers.length === 0) {
      // A 0-byte message without fds is indistinguishable from hang-up on SOCK_SEQPACKET.
      throw misuse('ERR_DEVLEASE_INVALID_ARG', 'an empty message must carry at least one fd');
    }
    if (this.#queue.length === 0 && native.sendmsg(fd, data, numbers) >= 0) return;

    const dups: Fd[] = [];
    try {
      // Whose they are is not known here (a relayed client's fd, often): closed as a received one would be,
      // counted against the uid that sent it if it is an Fd that knows.
      for (const f of fds) dups.push(receivedCopy(f));
    } catch (err) {
      for (const d of dups) d.close();
      throw err;
    }
    this.#queue.push({ data: Buffer.from(data), fds: dups });
    this.#queuedBytes += data.length;
    this.#updateEvents();
  }

  /** Messages waiting for buffer space. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Bytes of messages waiting for buffer space ('drain' is emitted when they are all sent). */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /**
   * Stop reading: the peer's next messages wait in the kernel (its sends block
   * or fail with EAGAIN once our receive queue is full). Hang-up is still
   * noticed. Idempotent.
   */
  pause(): void {
    this.#paused = true;
    this.#updateEvents();
  }

  /** Read again after pause(). Idempotent. */
  resume(): void {
    this.#paused = false;
    this.#updateEvents();
  }

  get paused(): boolean {
    return this.#paused;
  }

  /** SO_PEERCRED: the peer's pid/uid/gid at connect() time. */
  peerCred(): PeerCred {
    return peerCredOf(this.fd.fd);
  }

  /** SO_PEERGROUPS: the peer's supplementary groups at connect() time (peer.ts). */
  peerGroups(): number[] {
    return peerGroupsOf(this.fd.fd);
  }

  /**
   * SO_PEERPIDFD, with the pidfd_open fallback of older kernels (see peer.ts). `credPid`: SO_PEERCRED's pid
   * when the caller has read it already (≤ 0 or undefined: read here).
   */
  peerPidfd(credPid?: number): PidFd {
    return peerPidfdOf(this.fd.fd, credPid);
  }

  ref(): void {
    this.#watch.ref();
  }

  unref(): void {
    this.#watch.unref();
  }

  /** Idempotent. Drops unsent queued messages; 'close' follows on the next tick. */
  close(): void {
    if (this.#release()) process.nextTick(() => this.emit('close'));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // Stops watching and closes everything; true if this call did it.
  #release(): boolean {
    const fd = this.#fd;
    if (fd === null) return false;
    this.#fd = null;
    this.#watch.stop();
    fd.close();
    for (const m of this.#queue.splice(0)) for (const d of m.fds) d.close();
    this.#queuedBytes = 0;
    if (this.#closeEmitted) return false;
    this.#closeEmitted = true;
    return true;
  }

  #hangUp(): void {
    if (this.#release()) this.emit('close');
  }

  #fail(err: unknown): void {
    const wasOpen = this.#release();
    this.emit('error', err);
    if (wasOpen) this.emit('close');
  }

  #setInterest(reading: boolean): void {
    this.#reading = reading;
    this.#updateEvents();
  }

  #updateEvents(): void {
    if (this.#fd === null) return;
    const reading = this.#reading && !this.#paused;
    this.#watch.events = DISCONNECT | (reading ? READABLE : 0) | (this.#queue.length > 0 ? WRITABLE : 0);
  }

  #onReady(status: number, events: number): void {
    if (this.#fd === null) return;
    if (status < 0) {
      // EPOLLERR: on a unix socket, the peer closed with messages unread
      // (ECONNRESET). libuv has stopped the watch. Hand out what is still
      // queued to us if someone listens, then report the hang-up.
      if (this.#reading) this.#read(Number.POSITIVE_INFINITY);
      this.#hangUp();
      return;
    }
    if (events & WRITABLE) this.#flush();
    if (this.#fd !== null && events & READABLE) this.#read(READ_BATCH);
    if (this.#fd !== null && events & DISCONNECT && !(this.#reading && !this.#paused)) this.#hangUp();
  }

  #flush(): void {
    while (this.#fd !== null && this.#queue.length > 0) {
      const m = this.#queue[0]!;
      let sent: number;
      try {
        sent = native.sendmsg(
          this.#fd.fd,
          m.data,
          m.fds.map((d) => d.fd),
        );
      } catch (err) {
        if (isSysError(err) && PEER_GONE.has(err.code)) this.#hangUp();
        else this.#fail(err);
        return;
      }
      if (sent < 0) break;
      this.#queue.shift();
      this.#queuedBytes -= m.data.length;
      for (const d of m.fds) d.close();
    }
    this.#updateEvents();
    if (this.#fd !== null && this.#queue.length === 0) this.emit('drain');
  }

  #read(budget: number): void {
    for (let i = 0; i < budget; i++) {
      if (this.#fd === null || !this.#reading || this.#paused) return;
      let r: ReturnType<typeof native.recvmsg>;
      try {
        r = native.recvmsg(this.#fd.fd, this.maxMessage, this.maxFds);
      } catch (err) {
        // ECONNRESET is reported once, before any messages still queued.
        if (isSysError(err, 'ECONNRESET')) continue;
        this.#fail(err);
        return;
      }
      if (r === null) return;
      if (r.eof) {
        this.#hangUp();
        return;
      }
      const msg: SeqpacketMessage = {
        data: r.data,
        fds: r.fds.map((n) => new Fd(n, RECEIVED)),
        truncated: r.truncated,
        ctruncated: r.ctruncated,
      };
      if (!this.emit('message', msg)) for (const d of msg.fds) d.close();
    }
  }
}
