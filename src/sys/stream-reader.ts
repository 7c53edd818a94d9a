// The read side of a StreamSocket: the bytes and fds a connected SOCK_STREAM
// socket gives, cut into framed messages (each with the fds it came with).
//
// At a message boundary one recvmsg reads up to 64 KiB into a buffer shared
// by every socket of the process, and the messages in it are split out (each
// copied into its own Buffer); a read that comes short emptied the kernel's
// queue, so no second read is made to hear EAGAIN (the poll is
// level-triggered: bytes that arrive later raise another event). The rest of
// a message cut off by the end of a read is read exactly, never past its end.
//
// Which message fds belong to follows from what af_unix's stream receive does
// (unix_stream_read_generic, unchanged in this respect from 4.x to 6.x): a
// recvmsg returns the fds of at most one skb, and stops right after the skb
// that carried them; the skb starts where the sender's sendmsg did. So the
// fds a read returns came with the last message that starts in it (every
// stock peer sends a message with one sendmsg). fds in a read of the rest of
// a message (no message starts in it), a size outside [headerSize,
// maxMessage], more fds than maxFds: the peer is cut off (EPROTO); nothing it
// sent is leaked.
//
// fds this process cannot take — its fd table full (EMFILE), or a security
// module refusing them (native RECV_CUT) — are the receiver's failure, not the
// peer's: the kernel still reads the message's bytes in full (the framing is
// intact), so the message is delivered whole, without fds, with the reason
// (deliver's fdsLost) for its receiver to fail that one message; the fds that
// did arrive are closed, and the connection carries on.
//
// An untrusted peer (a client) is also cut off (EMFILE) by a message that
// carries fds while the addon's closer thread has too many received fds
// queued behind a close that does not return (native/close.cc): its queue's
// limit, or the share of it of the peer's uid. The fds are dropped unopened.
// Every fd read from such a peer carries its uid (Fd.senderUid), so that once
// closed onto that queue it counts against the uid that sent it: the user who
// holds a close up exhausts its own share, not every client's.
import { DevleaseError, isSysError } from '../errors.js';
import { Fd, type FdOptions, receivedFrom } from './fd.js';
import { native, RECV_CUT } from './native.js';
import { backlogError, fdsLostError } from './stream-receive-errors.js';

export interface StreamFraming {
  /** Bytes at the start of every message, enough to know its size. */
  readonly headerSize: number;
  /** The whole message's size (header included), read from its header. */
  messageSize(header: Buffer): number;
}

/** What the reader reports to its socket. Called synchronously from read(). */
export interface StreamReaderSink {
  /** Whether a message may be delivered now (the socket open, reading on, not paused). */
  canDeliver(): boolean;
  /**
   * One whole message; its fds are the sink's from here. `fdsLost`: it came with fds this process could not
   * take (EMFILE: the fd table is full; EACCES: a security module refused them), so `fds` is empty: the
   * message is to fail on its own, the connection is sound.
   */
  deliver(data: Buffer, fds: Fd[], fdsLost: DevleaseError | null): void;
  /** The peer hung up (or reset the connection). */
  hangUp(): void;
  /** The peer broke the framing (EPROTO) or the read failed: the socket ends. */
  fail(err: unknown): void;
}

/**
 * One buffer for every socket's reads at a message boundary (JS runs one read at a time): per-connection
 * memory stays what a connection keeps, not a read buffer. What a read leaves undelivered is copied out.
 */
const SHARED_READ = Buffer.allocUnsafeSlow(64 * 1024);
let sharedReadBusy = false;
const NO_BYTES = Buffer.alloc(0);
/** What the last recvInto of this thread received besides bytes (native.ts: recvIntoFds). */
const RECV_FDS = native.recvIntoFds;

function protocolError(message: string): DevleaseError {
  return new DevleaseError('EPROTO', message);
}

export class StreamReader {
  readonly #framing: StreamFraming;
  readonly #maxMessage: number;
  readonly #maxFds: number;
  readonly #untrusted: boolean;
  /** An untrusted peer's uid (SO_PEERCRED; -1: not known), which its fds are counted against (native/close.cc). */
  readonly #peerUid: number;
  /** What the fds read are made with: received, from #peerUid. */
  readonly #fdOptions: FdOptions;
  readonly #sink: StreamReaderSink;
  // The message being read: its header first, then (once its size is known) all of it.
  readonly #header: Buffer;
  #msg: Buffer | null = null;
  #have = 0;
  // Messages read but not delivered yet (reading paused, or the batch ended): #ahead[#pos, #end). Never at
  // the same time as a message being read, which only the last of them can start.
  #ahead: Buffer = NO_BYTES;
  #pos = 0;
  #end = 0;
  /** fds of the message being read, or of the last message in #ahead. */
  #fds: Fd[] = [];
  /** Why that message's fds could not be received (fdsLostError); null if they were, or none came. */
  #fdsLost: DevleaseError | null = null;

  /**
   * `untrusted`: the peer is a client (StreamSocketOptions.untrustedPeer), whose uid is `peerUid` (null: not
   * known; a trusted peer's fds are counted against no uid).
   */
  constructor(
    framing: StreamFraming,
    maxMessage: number,
    maxFds: number,
    sink: StreamReaderSink,
    untrusted = false,
    peerUid: number | null = null,
  ) {
    this.#framing = framing;
    this.#maxMessage = maxMessage;
    this.#maxFds = maxFds;
    this.#untrusted = untrusted;
    this.#peerUid = untrusted && peerUid !== null ? peerUid : -1;
    this.#fdOptions = receivedFrom(this.#peerUid < 0 ? null : this.#peerUid);
    this.#sink = sink;
    this.#header = Buffer.allocUnsafe(framing.headerSize);
  }

  /** Whole messages already read wait to be delivered (they raise no poll event: the socket schedules it). */
  get waiting(): boolean {
    return this.#end > this.#pos;
  }

  /**
   * Reads from `fd` and delivers up to `budget` messages while the sink can take them. Stops when the kernel
   * has nothing more now, the socket ended, the sink stopped taking, or the budget is spent (then `waiting`
   * says whether read messages wait, or the kernel's raise another event).
   */
  read(fd: number, budget: number): void {
    let delivered = 0;
    while (this.#sink.canDeliver()) {
      if (this.#end > this.#pos) {
        delivered += this.#split(budget - delivered);
        if (this.#end > this.#pos) return; // paused by a listener, or the batch is spent
        continue;
      }
      if (delivered >= budget) return; // what the kernel still holds raises another event
      if (this.#msg !== null || this.#have > 0) {
        const more = this.#readRest(fd);
        if (more === 'stop') return;
        if (more === 'message') delivered++;
      } else {
        const n = this.#readAhead(fd, budget - delivered);
        if (n < 0) return;
        delivered += n;
      }
    }
  }

  /**
   * What has been read and not delivered (whole messages, then the start of one) and the fds that came with
   * the last message starting in it: the part of the stream a handover must carry along with the socket.
   */
  partial(): { data: Buffer; fds: readonly Fd[] } {
    // The next process would read it as a message that came without fds, and serve it as one.
    if (this.#fdsLost !== null)
      throw new DevleaseError(
        this.#fdsLost.code,
        `a message whose fds could not be received waits to be delivered (${this.#fdsLost.message}): it cannot be handed over`,
      );
    if (this.#end > this.#pos)
      return { data: Buffer.from(this.#ahead.subarray(this.#pos, this.#end)), fds: this.#fds };
    const buf = this.#msg ?? this.#header;
    return { data: Buffer.from(buf.subarray(0, this.#have)), fds: this.#fds };
  }

  /**
   * Carries on from bytes another reader took off this stream: zero or more whole messages, then the start of
   * one; the fds came with the last message that starts in them (what one read gives, see the header). Throws
   * EPROTO, taking nothing, when a message in them announces a size out of bounds.
   */
  seed(p: { data: Buffer; fds: Fd[] }): void {
    const h = this.#header.length;
    let at = 0;
    while (p.data.length - at >= h) {
      const size = this.#framing.messageSize(p.data.subarray(at, at + h));
      if (!Number.isInteger(size) || size < h || size > this.#maxMessage) {
        throw protocolError(`a handed-over message of ${p.data.length - at} bytes announces ${size}`);
      }
      at += size;
    }
    // Checked: the fds are this reader's from here (on a throw above they stay the caller's).
    this.#fds = p.fds;
    this.#fdsLost = null;
    if (p.data.length === 0) return;
    this.#ahead = Buffer.from(p.data);
    this.#pos = 0;
    this.#end = p.data.length;
  }

  /** Drops what was read and not delivered, closing its fds. Idempotent. */
  drop(): void {
    for (const d of this.#fds.splice(0)) d.close();
    this.#fdsLost = null;
    this.#msg = null;
    this.#have = 0;
    this.#ahead = NO_BYTES;
    this.#pos = this.#end = 0;
  }

  /**
   * Reads at a message boundary into the shared buffer, as much as the kernel has, and delivers up to `budget`
   * of the messages in it. -1 when the kernel has nothing more now (EAGAIN, or the read came short: it emptied
   * the queue) or the socket ended; else how many were delivered.
   */
  #readAhead(fd: number, budget: number): number {
    const buf = sharedReadBusy ? Buffer.allocUnsafe(SHARED_READ.length) : SHARED_READ;
    const n = this.#recv(fd, buf, 0, buf.length);
    if (n < 0) return -1;
    const fds = this.#recvFds();
    this.#fds = fds;
    this.#fdsLost = RECV_FDS[1] === RECV_CUT.NONE ? null : fdsLostError(RECV_FDS[1]!);
    this.#ahead = buf;
    this.#pos = 0;
    this.#end = n;
    // A read stops after the skb that carried fds (taken or not): one with fds says nothing about what is left.
    const drained = n < buf.length && fds.length === 0 && this.#fdsLost === null;
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
  #readRest(fd: number): 'stop' | 'more' | 'message' {
    const headerSize = this.#header.length;
    const inHeader = this.#msg === null;
    const buf = inHeader ? this.#header : this.#msg!;
    const want = (inHeader ? headerSize : buf.length) - this.#have;
    const n = this.#recv(fd, buf, this.#have, want);
    if (n < 0) return 'stop';
    // (fds this process could not take count too: the peer sent them where none may come.)
    if (RECV_FDS[0]! > 0 || RECV_FDS[1] !== RECV_CUT.NONE) {
      for (const d of this.#recvFds()) d.close();
      this.#sink.fail(
        protocolError(`fds arrived ${this.#have} bytes into a message (they must come with its first bytes)`),
      );
      return 'stop';
    }
    this.#have += n;
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
    const lost = this.#fdsLost;
    this.#msg = null;
    this.#have = 0;
    this.#fds = [];
    this.#fdsLost = null;
    this.#sink.deliver(data, fds, lost);
    return 'message';
  }

  /**
   * recvmsg: -1 on EAGAIN or once the socket ended (hang-up, error, fds past maxFds), else the bytes read; the
   * fds that came with them are in RECV_FDS, to be taken with #recvFds() before the next read, and RECV_FDS[1]
   * says whether fds came that this process could not take (TABLE_FULL, REFUSED: its own failure, not the
   * peer's; none of them is left open).
   */
  #recv(fd: number, buf: Buffer, offset: number, length: number): number {
    let n: number;
    try {
      n = native.recvInto(fd, buf, offset, length, this.#maxFds, this.#untrusted, this.#peerUid);
    } catch (err) {
      if (isSysError(err, 'ECONNRESET')) this.#sink.hangUp();
      else this.#sink.fail(err);
      return -1;
    }
    if (n < 0) return -1;
    const cut = RECV_FDS[1];
    if (cut === RECV_CUT.TOO_MANY || cut === RECV_CUT.BACKLOGGED) {
      for (const d of this.#recvFds()) d.close();
      this.#sink.fail(
        cut === RECV_CUT.BACKLOGGED
          ? backlogError(this.#peerUid)
          : protocolError(`a message carried more than ${this.#maxFds} fds`),
      );
      return -1;
    }
    if (n === 0) {
      // Hang-up; a partly read message and its fds are dropped.
      for (const d of this.#recvFds()) d.close();
      this.#sink.hangUp();
      return -1;
    }
    return n;
  }

  /** The fds the last read received, now owned (a new array: they go with a message). */
  #recvFds(): Fd[] {
    const count = RECV_FDS[0]!;
    if (count === 0) return [];
    const fds: Fd[] = [];
    for (let i = 0; i < count; i++) fds.push(new Fd(RECV_FDS[i + 2]!, this.#fdOptions));
    RECV_FDS[0] = 0; // taken: never wrapped twice
    return fds;
  }

  /** A message's size from its header; -1 (the peer cut off) if the header is bad or the size out of bounds. */
  #sizeOf(header: Buffer): number {
    const headerSize = this.#header.length;
    let size: number;
    try {
      size = this.#framing.messageSize(header);
    } catch (err) {
      this.#sink.fail(protocolError(`bad message header: ${(err as Error).message}`));
      return -1;
    }
    if (!Number.isInteger(size) || size < headerSize || size > this.#maxMessage) {
      this.#sink.fail(protocolError(`message size ${size} outside [${headerSize}, ${this.#maxMessage}]`));
      return -1;
    }
    return size;
  }

  /**
   * Delivers the whole messages in #ahead, up to `budget` and while the sink takes them; a message cut off at
   * the end becomes the message being read. The fds go with the last message that starts in #ahead.
   */
  #split(budget: number): number {
    const h = this.#header.length;
    let delivered = 0;
    while (this.#end > this.#pos && delivered < budget && this.#sink.canDeliver()) {
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
      let lost: DevleaseError | null = null;
      if (this.#pos === this.#end) {
        fds = this.#fds;
        lost = this.#fdsLost;
        this.#fds = [];
        this.#fdsLost = null;
      }
      delivered++;
      this.#sink.deliver(data, fds, lost);
    }
    if (this.#pos === this.#end && this.#ahead !== NO_BYTES) {
      this.#ahead = NO_BYTES;
      this.#pos = this.#end = 0;
    }
    return delivered;
  }
}
