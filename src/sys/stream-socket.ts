// A connected AF_UNIX SOCK_STREAM socket carrying framed messages with fds,
// driven by uv_poll (no threads, no blocking). This is the vfio-user wire as
// QEMU and libvfio-user speak it: every message starts with a fixed-size
// header that holds the message's total size; fds (SCM_RIGHTS) travel with
// the message's first bytes.
//
// Reading (stream-reader.ts): at a message boundary one recvmsg reads as
// much as the kernel has and the messages in it are split out; fds go with
// the last message that starts in a read (what af_unix's stream receive
// guarantees, see there). fds that arrive after a message's first read, a
// size outside [headerSize, maxMessage], more fds than maxFds: the peer is
// cut off ('error' with code EPROTO, then 'close'); nothing it sent is leaked.
// fds this process cannot take (its fd table full) fail their message alone:
// it is delivered whole, without fds, with `fdsLost` saying why.
//
// Writing (stream-writer.ts): send() never blocks; what the kernel does not
// take at once is queued and written in order when writable, the fds with
// the first bytes written, exactly once. Corking (cork()/uncork(), batch()):
// messages without fds sent meanwhile go in one sendmsg at uncork, so
// pipelined messages wake the peer once, not once each; a message with fds
// goes in its own sendmsg (peers attribute fds by the sendmsg they came in).
//
// Ownership: as SeqpacketSocket — send() leaves the caller its fds (a queued
// message holds dup()s until written); a 'message' listener owns msg.fds;
// reading pauses while there is no 'message' listener (messages already read
// wait in the socket, and partial() hands them over); 'close' once.
import { EventEmitter } from 'node:events';
import { closedError, type DevleaseError, misuse } from '../errors.js';
import { Fd } from './fd.js';
import { MAX_FDS, native, type PeerCred } from './native.js';
import { peerCredOf, peerPidfdOf, peerUidOf } from './peer.js';
import type { PidFd } from './pidfd.js';
import { type StreamFraming, StreamReader } from './stream-reader.js';
import { StreamWriter } from './stream-writer.js';
import { DISCONNECT, READABLE, Watch, WRITABLE } from './watch.js';

export type { StreamFraming } from './stream-reader.js';
export { CORK_LIMIT } from './stream-writer.js';

export interface StreamSocketOptions {
  framing: StreamFraming;
  /** Largest message accepted (header included); a peer announcing more is cut off. Default 1 MiB + 4 KiB. */
  maxMessage?: number;
  /** Most fds one message may carry (0..MAX_FDS, default MAX_FDS); a peer sending more is cut off. */
  maxFds?: number;
  /**
   * What another process had read from this socket and not served before handing it over (a broker upgrade,
   * src/broker/handover; partial() there): whole messages, then the start of one. Reading carries on from there,
   * so no byte of the stream is lost. The fds came with the last message starting in those bytes and are owned
   * from here; if the bytes announce a size out of bounds the constructor throws EPROTO, closes `fd` and leaves
   * the fds to the caller.
   */
  partial?: { data: Buffer; fds: Fd[] };
  /**
   * The peer is a client, not a server this process chose: once the addon's closer thread has its limit of
   * received fds queued behind a close that does not return (native/close.cc), or the peer's uid (SO_PEERCRED,
   * read once here) its share of that limit, a message of this peer that carries fds cuts it off, and the kernel
   * drops those fds unopened (no close, so no file system is asked). Its fds are counted against that uid.
   */
  untrustedPeer?: boolean;
}

export interface StreamMessage {
  data: Buffer;
  /** Received descriptors, owned by the receiver. */
  fds: Fd[];
  /** Always false: an oversized message cuts the peer off instead. Kept for the record shape. */
  truncated: boolean;
  /** Always false: more fds than maxFds cut the peer off instead. */
  ctruncated: boolean;
  /**
   * The message came with fds this process could not take — code EMFILE: its fd table is full; EACCES: a
   * security module refused them — so `fds` is empty (those that came are closed). The message is whole and
   * the connection sound: it is this message that fails. Null when its fds (if any) came.
   */
  fdsLost: DevleaseError | null;
}

/** Messages delivered per readiness callback before yielding to the loop. */
const READ_BATCH = 64;

export class StreamSocket extends EventEmitter {
  readonly framing: StreamFraming;
  readonly maxMessage: number;
  readonly maxFds: number;
  #fd: Fd | null;
  #watch: Watch;
  readonly #writer: StreamWriter;
  #reading = false;
  #paused = false;
  #closeEmitted = false;
  readonly #reader: StreamReader;
  #refed = true;
  #deliverLater: NodeJS.Immediate | null = null;
  #corkReads = false;

  /** Connects to a listening stream socket; throws ENOENT / ECONNREFUSED / EPROTOTYPE (with `code`) synchronously. */
  static connect(path: string, opts: StreamSocketOptions): StreamSocket {
    return new StreamSocket(new Fd(native.unixConnect(path, true)), opts);
  }

  /** Two connected stream sockets (socketpair). */
  static pair(opts: StreamSocketOptions): [StreamSocket, StreamSocket] {
    const [a, b] = native.unixPair(true);
    const fdB = new Fd(b);
    let first: StreamSocket;
    try {
      first = new StreamSocket(new Fd(a), opts);
    } catch (err) {
      fdB.close();
      throw err;
    }
    try {
      return [first, new StreamSocket(fdB, opts)];
    } catch (err) {
      first.close();
      throw err;
    }
  }

  /** Adopts a connected, non-blocking stream socket (takes ownership of `fd`, closing it if opts are invalid). */
  constructor(fd: Fd, opts: StreamSocketOptions) {
    super();
    try {
      const maxMessage = opts.maxMessage ?? 1024 * 1024 + 4096;
      const maxFds = opts.maxFds ?? MAX_FDS;
      const h = opts.framing?.headerSize;
      if (!Number.isInteger(h) || h < 1 || h > 4096) {
        throw misuse(
          'ERR_DEVLEASE_INVALID_ARG',
          `framing.headerSize must be an integer in [1, 4096], got ${h}`,
        );
      }
      if (!Number.isInteger(maxMessage) || maxMessage < h || maxMessage > 64 * 1024 * 1024) {
        throw misuse(
          'ERR_DEVLEASE_INVALID_ARG',
          `maxMessage must be an integer in [headerSize, 64 MiB], got ${maxMessage}`,
        );
      }
      if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > MAX_FDS) {
        throw misuse(
          'ERR_DEVLEASE_INVALID_ARG',
          `maxFds must be an integer in [0, ${MAX_FDS}], got ${maxFds}`,
        );
      }
      this.framing = opts.framing;
      this.maxMessage = maxMessage;
      this.maxFds = maxFds;
      this.#reader = new StreamReader(
        opts.framing,
        maxMessage,
        maxFds,
        {
          canDeliver: () => this.#fd !== null && this.#reading && !this.#paused,
          deliver: (data, fds, fdsLost) => this.#deliver(data, fds, fdsLost),
          hangUp: () => this.#hangUp(),
          fail: (err) => this.#fail(err),
        },
        opts.untrustedPeer === true,
        opts.untrustedPeer === true ? peerUidOf(fd.fd) : null,
      );
      // Before the watch: a bad partial closes `fd` like a bad option, and leaves its fds to the caller.
      if (opts.partial) this.#reader.seed(opts.partial);
      this.#writer = new StreamWriter(fd.fd, {
        hangUp: () => this.#hangUp(),
        fail: (err) => this.#fail(err),
        updateEvents: () => this.#updateEvents(),
        drained: () => this.emit('drain'),
      });
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
   * Sends one message (at least one byte) with up to MAX_FDS descriptors,
   * never blocking; what the kernel does not take now is queued. Throws
   * synchronously on misuse and on errors of the immediate attempt (EPIPE
   * when the peer is gone).
   */
  send(data: Uint8Array, fds: readonly (Fd | number)[] = []): void {
    if (this.#fd === null) throw closedError('socket');
    if (!(data instanceof Uint8Array)) throw misuse('ERR_DEVLEASE_INVALID_ARG', 'data must be a Uint8Array');
    if (data.length === 0) throw misuse('ERR_DEVLEASE_INVALID_ARG', 'a stream message has at least one byte');
    if (fds.length > MAX_FDS) {
      throw misuse(
        'ERR_DEVLEASE_TOO_MANY_FDS',
        `a message carries at most ${MAX_FDS} fds, got ${fds.length}`,
      );
    }
    this.#writer.send(data, fds);
  }

  /**
   * Until the matching uncork(), send() of a message without fds only joins it to the others (in order);
   * uncork() sends them in one sendmsg. Nests: the outermost uncork() sends.
   */
  cork(): void {
    if (this.#fd === null) throw closedError('socket');
    this.#writer.cork();
  }

  /** Ends a cork(): the outermost sends what was corked (its errors close the socket, as a queued write's do). */
  uncork(): void {
    this.#writer.uncork();
  }

  /** Runs `fn` corked: the messages it sends without fds go in one sendmsg when it returns (or throws). */
  batch<T>(fn: () => T): T {
    this.cork();
    try {
      return fn();
    } finally {
      this.uncork();
    }
  }

  /**
   * While on, what the 'message' listeners send as one read's messages are delivered is corked until they all
   * are: a server answering pipelined requests at once sends their replies in one sendmsg (one wake-up of the
   * client), not one each. Replies sent later (from promises) are not held.
   */
  corkReads(on = true): void {
    this.#corkReads = on;
  }

  /** Bytes waiting for buffer space ('drain' is emitted when they are all written). */
  get queuedBytes(): number {
    return this.#writer.queuedBytes;
  }

  /** Descriptors held to go with queued bytes (a dup each). */
  get queuedFds(): number {
    return this.#writer.queuedFds;
  }

  /**
   * Stop reading (flow control: the peer's next messages wait in the kernel,
   * and once its socket buffer is full its writes block or fail with EAGAIN).
   * Hang-up is still noticed. Idempotent.
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

  /**
   * What has been read and not delivered (whole messages read ahead, then the start of one) and the fds that
   * came with the last message starting in it: the part of the stream a handover must carry along with the
   * socket (read while paused, it stays put).
   */
  partial(): { data: Buffer; fds: readonly Fd[] } {
    return this.#reader.partial();
  }

  peerCred(): PeerCred {
    return peerCredOf(this.fd.fd);
  }

  /**
   * SO_PEERPIDFD, with the pidfd_open fallback of older kernels (see peer.ts). `credPid`: SO_PEERCRED's pid
   * when the caller has read it already (≤ 0 or undefined: read here).
   */
  peerPidfd(credPid?: number): PidFd {
    return peerPidfdOf(this.fd.fd, credPid);
  }

  ref(): void {
    this.#refed = true;
    this.#watch.ref();
    this.#deliverLater?.ref();
  }

  unref(): void {
    this.#refed = false;
    this.#watch.unref();
    this.#deliverLater?.unref();
  }

  /**
   * Idempotent. Drops unsent data (what the kernel did not take; corked bytes get one try) and any partly read
   * message; 'close' follows on the next tick.
   */
  close(): void {
    if (this.#fd !== null) this.#writer.sendCorkedAtClose(); // corked bytes get one try
    if (this.#release()) process.nextTick(() => this.emit('close'));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #release(): boolean {
    const fd = this.#fd;
    if (fd === null) return false;
    this.#fd = null;
    this.#watch.stop();
    fd.close();
    this.#writer.drop();
    this.#dropPartial();
    if (this.#closeEmitted) return false;
    this.#closeEmitted = true;
    return true;
  }

  #dropPartial(): void {
    this.#reader.drop();
    if (this.#deliverLater) clearImmediate(this.#deliverLater);
    this.#deliverLater = null;
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
    this.#watch.events = DISCONNECT | (reading ? READABLE : 0) | (this.#writer.waiting ? WRITABLE : 0);
    // Messages read ahead raise no poll event: deliver them from the loop.
    if (reading && this.#reader.waiting && this.#deliverLater === null) {
      this.#deliverLater = setImmediate(() => {
        this.#deliverLater = null;
        this.#read(READ_BATCH);
      });
      if (!this.#refed) this.#deliverLater.unref();
    }
  }

  #onReady(status: number, events: number): void {
    if (this.#fd === null) return;
    if (status < 0) {
      // EPOLLERR: the peer reset the connection. Deliver what is complete, then hang up.
      if (this.#reading) this.#read(Number.POSITIVE_INFINITY);
      this.#hangUp();
      return;
    }
    if (events & WRITABLE) this.#writer.flush();
    if (this.#fd !== null && events & READABLE) this.#read(READ_BATCH);
    if (this.#fd !== null && events & DISCONNECT && !(this.#reading && !this.#paused)) this.#hangUp();
  }

  #read(budget: number): void {
    if (this.#fd === null) return;
    const corked = this.#corkReads;
    if (corked) this.#writer.cork();
    try {
      this.#reader.read(this.#fd.fd, budget);
    } finally {
      if (corked) this.uncork();
      // Messages read and not delivered (paused by a listener, the batch spent, a listener that threw) raise
      // no poll event: delivered from the loop.
      if (this.#reader.waiting) this.#updateEvents();
    }
  }

  #deliver(data: Buffer, fds: Fd[], fdsLost: DevleaseError | null): void {
    const msg: StreamMessage = { data, fds, truncated: false, ctruncated: false, fdsLost };
    if (!this.emit('message', msg)) for (const d of msg.fds) d.close();
  }
}
