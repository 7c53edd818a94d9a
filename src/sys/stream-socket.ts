// A connected AF_UNIX SOCK_STREAM socket carrying framed messages with fds,
// driven by uv_poll (no threads, no blocking). This is the vfio-user wire as
// QEMU and libvfio-user speak it: every message starts with a fixed-size
// header that holds the message's total size; fds (SCM_RIGHTS) travel with
// the message's first bytes.
//
// Reading: at a message boundary one recvmsg reads up to 64 KiB into a
// buffer shared by every socket of the process, and the messages in it are
// split out (each copied into its own Buffer); a read that comes short
// emptied the kernel's queue, so no second read is made to hear EAGAIN (the
// poll is level-triggered: bytes that arrive later raise another event). The
// rest of a message cut off by the end of a read is read exactly, never past
// its end. Which message fds belong to follows from what af_unix's stream
// receive does (unix_stream_read_generic, unchanged in this respect from 4.x
// to 6.x): a recvmsg returns the fds of at most one skb, and stops right
// after the skb that carried them; the skb starts where the sender's sendmsg
// did. So the fds a read returns came with the last message that starts in
// it (every stock peer sends a message with one sendmsg). fds in a read of
// the rest of a message (no message starts in it), a size outside
// [headerSize, maxMessage], more fds than maxFds: the peer is cut off
// ('error' with code EPROTO, then 'close'); nothing it sent is leaked.
//
// Writing: send() never blocks. What the kernel does not take at once
// (partial write or a full buffer) is queued and written in order when
// writable; the fds go with the first bytes written, exactly once.
//
// Ownership: as SeqpacketSocket — send() leaves the caller its fds (a queued
// message holds dup()s until written); a 'message' listener owns msg.fds;
// reading pauses while there is no 'message' listener (messages already read
// wait in the socket, and partial() hands them over); 'close' once.
import { EventEmitter } from 'node:events';
import { closedError, DevleaseError, isSysError, misuse } from '../errors.js';
import { Fd, fdNumber } from './fd.js';
import { MAX_FDS, native, type PeerCred } from './native.js';
import { peerCredOf, peerPidfdOf } from './peer.js';
import type { PidFd } from './pidfd.js';
import { DISCONNECT, READABLE, Watch, WRITABLE } from './watch.js';

export interface StreamFraming {
  /** Bytes at the start of every message, enough to know its size. */
  readonly headerSize: number;
  /** The whole message's size (header included), read from its header. */
  messageSize(header: Buffer): number;
}

export interface StreamSocketOptions {
  framing: StreamFraming;
  /** Largest message accepted (header included); a peer announcing more is cut off. Default 1 MiB + 4 KiB. */
  maxMessage?: number;
  /** Most fds one message may carry (0..MAX_FDS, default MAX_FDS); a peer sending more is cut off. */
  maxFds?: number;
  /**
   * The start of a message another process had read from this socket before handing it over (a broker
   * upgrade, src/broker/handover): reading carries on from there, so no byte of the stream is lost. The fds
   * came with those bytes and are owned from here.
   */
  partial?: { data: Buffer; fds: Fd[] };
}

export interface StreamMessage {
  data: Buffer;
  /** Received descriptors, owned by the receiver. */
  fds: Fd[];
  /** Always false: an oversized message cuts the peer off instead. Kept for the record shape. */
  truncated: boolean;
  ctruncated: boolean;
}

interface Queued {
  data: Uint8Array;
  /** dup()s of the fds still to send with the first bytes; empty once they went. */
  fds: Fd[];
}

/** Messages delivered per readiness callback before yielding to the loop. */
const READ_BATCH = 64;
/**
 * One buffer for every socket's reads at a message boundary (JS runs one read at a time): per-connection
 * memory stays what a connection keeps, not a read buffer. What a read leaves undelivered is copied out.
 */
const SHARED_READ = Buffer.allocUnsafeSlow(64 * 1024);
let sharedReadBusy = false;
const NO_BYTES = Buffer.alloc(0);
const PEER_GONE = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

function protocolError(message: string): DevleaseError {
  return new DevleaseError('EPROTO', message);
}

export class StreamSocket extends EventEmitter {
  readonly framing: StreamFraming;
  readonly maxMessage: number;
  readonly maxFds: number;
  #fd: Fd | null;
  #watch: Watch;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  #reading = false;
  #paused = false;
  #closeEmitted = false;
  // The message being read: its header first, then (once its size is known) all of it.
  #header: Buffer;
  #msg: Buffer | null = null;
  #have = 0;
  // Messages read but not delivered yet (reading paused, or the batch ended): #ahead[#pos, #end). Never at
  // the same time as a message being read, which only the last of them can start.
  #ahead: Buffer = NO_BYTES;
  #pos = 0;
  #end = 0;
  /** fds of the message being read, or of the last message in #ahead. */
  #fds: Fd[] = [];
  #refed = true;
  #deliverLater: NodeJS.Immediate | null = null;

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
      this.#header = Buffer.allocUnsafe(h);
      this.#watch = new Watch(fd.fd, DISCONNECT, (status, events) => this.#onReady(status, events));
    } catch (err) {
      fd.close();
      throw err;
    }
    this.#fd = fd;
    if (opts.partial) this.#seed(opts.partial);
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
    const fd = this.fd.fd;
    if (!(data instanceof Uint8Array)) throw misuse('ERR_DEVLEASE_INVALID_ARG', 'data must be a Uint8Array');
    if (data.length === 0) throw misuse('ERR_DEVLEASE_INVALID_ARG', 'a stream message has at least one byte');
    if (fds.length > MAX_FDS) {
      throw misuse(
        'ERR_DEVLEASE_TOO_MANY_FDS',
        `a message carries at most ${MAX_FDS} fds, got ${fds.length}`,
      );
    }
    const numbers = fds.map(fdNumber);
    let sent = 0;
    if (this.#queue.length === 0) {
      sent = Math.max(0, native.sendmsg(fd, data, numbers));
      if (sent === data.length) return;
    }
    // The fds went with the first bytes if any were written; else they wait with the data.
    const dups: Fd[] = [];
    if (sent === 0) {
      try {
        for (const n of numbers) dups.push(new Fd(native.dup(n)));
      } catch (err) {
        for (const d of dups) d.close();
        throw err;
      }
    }
    const rest = Buffer.from(data.subarray(sent));
    this.#queue.push({ data: rest, fds: dups });
    this.#queuedBytes += rest.length;
    this.#updateEvents();
  }

  /** Bytes waiting for buffer space ('drain' is emitted when they are all written). */
  get queuedBytes(): number {
    return this.#queuedBytes;
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
   * What has been read of the message in progress (its first bytes, and the fds that came with them): the
   * part of the stream a handover must carry along with the socket (read while paused, it stays put).
   */
  partial(): { data: Buffer; fds: readonly Fd[] } {
    // Messages read ahead (whole ones, and the start of the last): the fds are the last one's, as when
    // the stream is read (see #seed).
    if (this.#end > this.#pos)
      return { data: Buffer.from(this.#ahead.subarray(this.#pos, this.#end)), fds: this.#fds };
    const buf = this.#msg ?? this.#header;
    return { data: Buffer.from(buf.subarray(0, this.#have)), fds: this.#fds };
  }

  /**
   * Carries on from bytes another reader took off this stream: zero or more whole messages, then the start of
   * one; the fds came with the last message that starts in them (what one read gives, see the header).
   */
  #seed(p: { data: Buffer; fds: Fd[] }): void {
    const h = this.#header.length;
    this.#fds = p.fds;
    let at = 0;
    while (p.data.length - at >= h) {
      const size = this.framing.messageSize(p.data.subarray(at, at + h));
      if (!Number.isInteger(size) || size < h || size > this.maxMessage) {
        throw protocolError(`a handed-over message of ${p.data.length - at} bytes announces ${size}`);
      }
      at += size;
    }
    if (p.data.length === 0) return;
    this.#ahead = Buffer.from(p.data);
    this.#pos = 0;
    this.#end = p.data.length;
  }

  peerCred(): PeerCred {
    return peerCredOf(this.fd.fd);
  }

  /** SO_PEERPIDFD, with the pidfd_open fallback of older kernels (see peer.ts). */
  peerPidfd(): PidFd {
    return peerPidfdOf(this.fd.fd);
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

  /** Idempotent. Drops unsent data and any partly read message; 'close' follows on the next tick. */
  close(): void {
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
    for (const m of this.#queue.splice(0)) for (const d of m.fds) d.close();
    this.#queuedBytes = 0;
    this.#dropPartial();
    if (this.#closeEmitted) return false;
    this.#closeEmitted = true;
    return true;
  }

  #dropPartial(): void {
    for (const d of this.#fds.splice(0)) d.close();
    this.#msg = null;
    this.#have = 0;
    this.#ahead = NO_BYTES;
    this.#pos = this.#end = 0;
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
    this.#watch.events = DISCONNECT | (reading ? READABLE : 0) | (this.#queue.length > 0 ? WRITABLE : 0);
    // Messages read ahead raise no poll event: deliver them from the loop.
    if (reading && this.#end > this.#pos && this.#deliverLater === null) {
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
      if (sent <= 0) break;
      for (const d of m.fds.splice(0)) d.close();
      this.#queuedBytes -= sent;
      if (sent < m.data.length) {
        m.data = m.data.subarray(sent);
        break;
      }
      this.#queue.shift();
    }
    this.#updateEvents();
    if (this.#fd !== null && this.#queue.length === 0) this.emit('drain');
  }

  #read(budget: number): void {
    let delivered = 0;
    while (this.#fd !== null && this.#reading && !this.#paused) {
      if (this.#end > this.#pos) {
        delivered += this.#split(budget - delivered);
        if (this.#end > this.#pos) {
          // Paused by a listener, or the batch is spent: the rest waits (#updateEvents delivers it later).
          this.#updateEvents();
          return;
        }
        continue;
      }
      if (delivered >= budget) return; // what the kernel still holds raises another event
      if (this.#msg !== null || this.#have > 0) {
        const more = this.#readRest();
        if (more === 'stop') return;
        if (more === 'message') delivered++;
      } else {
        const n = this.#readAhead(budget - delivered);
        if (n < 0) return;
        delivered += n;
      }
    }
  }

  /**
   * Reads at a message boundary into the shared buffer, as much as the kernel has, and delivers up to `budget`
   * of the messages in it. -1 when the kernel has nothing more now (EAGAIN, or the read came short: it emptied
   * the queue) or the socket ended; else how many were delivered.
   */
  #readAhead(budget: number): number {
    const fd = this.#fd!.fd;
    const buf = sharedReadBusy ? Buffer.allocUnsafe(SHARED_READ.length) : SHARED_READ;
    const r = this.#recv(fd, buf, 0, buf.length);
    if (r === null) return -1;
    this.#fds = r.fds;
    this.#ahead = buf;
    this.#pos = 0;
    this.#end = r.n;
    // A read stops after the skb that carried fds: one with fds says nothing about what is left.
    const drained = r.n < buf.length && r.fds.length === 0;
    let delivered = 0;
    if (buf === SHARED_READ) sharedReadBusy = true;
    try {
      delivered = this.#split(budget);
    } finally {
      if (buf === SHARED_READ) {
        sharedReadBusy = false;
        // Undelivered messages (paused mid-read) keep their bytes: copy them out of the shared buffer.
        if (this.#ahead === SHARED_READ) {
          this.#ahead =
            this.#end > this.#pos ? Buffer.from(SHARED_READ.subarray(this.#pos, this.#end)) : NO_BYTES;
          this.#end -= this.#pos;
          this.#pos = 0;
        }
      }
    }
    return drained && this.#end === this.#pos ? -1 : delivered;
  }

  /** Reads the rest of the message cut off by the end of a read, never past its end (fds here: EPROTO). */
  #readRest(): 'stop' | 'more' | 'message' {
    const headerSize = this.#header.length;
    const inHeader = this.#msg === null;
    const buf = inHeader ? this.#header : this.#msg!;
    const want = (inHeader ? headerSize : buf.length) - this.#have;
    const r = this.#recv(this.#fd!.fd, buf, this.#have, want);
    if (r === null) return 'stop';
    if (r.fds.length > 0) {
      for (const d of r.fds) d.close();
      this.#fail(
        protocolError(`fds arrived ${this.#have} bytes into a message (they must come with its first bytes)`),
      );
      return 'stop';
    }
    this.#have += r.n;
    if (inHeader) {
      if (this.#have < headerSize) return 'stop';
      const size = this.#sizeOf(this.#header);
      if (size < 0) return 'stop';
      if (size > headerSize) {
        this.#msg = Buffer.allocUnsafe(size);
        this.#header.copy(this.#msg, 0);
        return 'more';
      }
      this.#msg = Buffer.from(this.#header);
    } else if (this.#have < buf.length) {
      return 'stop'; // came short: the kernel has no more now
    }
    const data = this.#msg!;
    const fds = this.#fds;
    this.#msg = null;
    this.#have = 0;
    this.#fds = [];
    this.#deliver(data, fds);
    return 'message';
  }

  /**
   * recvmsg: null on EAGAIN or once the socket ended (hang-up, error, fds past maxFds), else the bytes read
   * and the fds that came with them (now owned).
   */
  #recv(fd: number, buf: Buffer, offset: number, length: number): { n: number; fds: Fd[] } | null {
    let r: ReturnType<typeof native.recvInto>;
    try {
      r = native.recvInto(fd, buf, offset, length, this.maxFds);
    } catch (err) {
      if (isSysError(err, 'ECONNRESET')) this.#hangUp();
      else this.#fail(err);
      return null;
    }
    if (r === null) return null;
    const fds = r.fds.length > 0 ? r.fds.map((n) => new Fd(n)) : [];
    if (r.ctruncated) {
      for (const d of fds) d.close();
      this.#fail(protocolError(`a message carried more than ${this.maxFds} fds`));
      return null;
    }
    if (r.n === 0) {
      // Hang-up; a partly read message and its fds are dropped.
      for (const d of fds) d.close();
      this.#hangUp();
      return null;
    }
    return { n: r.n, fds };
  }

  /** A message's size from its header; -1 (the peer cut off) if the header is bad or the size out of bounds. */
  #sizeOf(header: Buffer): number {
    const headerSize = this.#header.length;
    let size: number;
    try {
      size = this.framing.messageSize(header);
    } catch (err) {
      this.#fail(protocolError(`bad message header: ${(err as Error).message}`));
      return -1;
    }
    if (!Number.isInteger(size) || size < headerSize || size > this.maxMessage) {
      this.#fail(protocolError(`message size ${size} outside [${headerSize}, ${this.maxMessage}]`));
      return -1;
    }
    return size;
  }

  /**
   * Delivers the whole messages in #ahead, up to `budget` and while reading is on; a message cut off at the
   * end becomes the message being read. The fds go with the last message that starts in #ahead.
   */
  #split(budget: number): number {
    const h = this.#header.length;
    let delivered = 0;
    while (
      this.#end > this.#pos &&
      delivered < budget &&
      this.#fd !== null &&
      this.#reading &&
      !this.#paused
    ) {
      const buf = this.#ahead;
      const left = this.#end - this.#pos;
      if (left < h) {
        buf.copy(this.#header, 0, this.#pos, this.#end);
        this.#have = left;
        this.#pos = this.#end;
        break;
      }
      const size = this.#sizeOf(buf.subarray(this.#pos, this.#pos + h));
      if (size < 0) break;
      if (left < size) {
        this.#msg = Buffer.allocUnsafe(size);
        buf.copy(this.#msg, 0, this.#pos, this.#end);
        this.#have = left;
        this.#pos = this.#end;
        break;
      }
      const data = Buffer.allocUnsafe(size);
      buf.copy(data, 0, this.#pos, this.#pos + size);
      this.#pos += size;
      let fds: Fd[] = [];
      if (this.#pos === this.#end) {
        fds = this.#fds;
        this.#fds = [];
      }
      delivered++;
      this.#deliver(data, fds);
    }
    if (this.#pos === this.#end && this.#ahead !== NO_BYTES) {
      this.#ahead = NO_BYTES;
      this.#pos = this.#end = 0;
    }
    return delivered;
  }

  #deliver(data: Buffer, fds: Fd[]): void {
    const msg: StreamMessage = { data, fds, truncated: false, ctruncated: false };
    if (!this.emit('message', msg)) for (const d of msg.fds) d.close();
  }
}
