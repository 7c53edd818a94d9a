// The server's side of server-to-client VFIO_USER_DMA_READ / DMA_WRITE (vfio-user.rst, "VFIO_USER_DMA_READ",
// "VFIO_USER_DMA_WRITE"): a device model reads and writes client memory that was mapped without an fd (or with
// one: the spec lets a server use them on any map) by message, and the connection routes the client's replies
// back here as they are read — never behind the requests being served, one of which may be the model waiting
// for this very reply (connection.ts #receive).
//
// The wire layout is PeerDmaLayout, one object a connection is given: SPEC_LAYOUT is the spec's and
// libvfio-user's. QEMU 11.1's own DMA_READ reply (struct VFIOUserDMARW: u64 offset, u32 count, data at 12)
// would be another such object, chosen per connection; it is not implemented.
import { ERRNO, errnoName, VfioError } from '../../errors.js';
import { encodeCommand, isError, type VfioUserMessage } from './codec.js';
import { vfio_user_dma_region_access } from './messages.js';
import * as P from './protocol.js';

export interface PeerDma {
  /**
   * The client's max_data_xfer_size from its VERSION (the server's own when smaller: a DMA_READ reply must fit its
   * receive buffer): the most one DMA_READ/DMA_WRITE may carry.
   */
  readonly maxTransfer: number;
  /** Commands sent and not yet answered, timed out or failed. */
  readonly outstanding: number;
  /** Commands that timed out and whose (late) reply has not come yet: the client is behind by that many. */
  readonly lateReplies: number;
  /** VFIO_USER_DMA_READ of [addr, addr+count): the bytes. */
  read(addr: bigint, count: number, timeoutMs: number): Promise<Uint8Array>;
  /** VFIO_USER_DMA_WRITE of data at addr. */
  write(addr: bigint, data: Uint8Array, timeoutMs: number): Promise<void>;
}

/** Server-to-client commands outstanding per connection: one more is refused EBUSY at once, nothing sent. */
export const MAX_PEER_COMMANDS = 16;

/**
 * Timed-out commands whose msg_id is kept out of use for a late reply (reused earlier, the late reply would
 * answer the new command with the old one's bytes): one more closes the connection. An id is freed only by
 * its reply; a client that leaves this many unanswered is not answering.
 */
export const MAX_TIMED_OUT_IDS = 1024;

/** The payloads of DMA_READ/DMA_WRITE and their replies. The decoders throw an Error naming what is wrong. */
export interface PeerDmaLayout {
  readRequest(addr: bigint, count: number): Uint8Array;
  /** The bytes a DMA_READ reply carries, once it is checked to answer [addr, addr+count). */
  readReply(payload: Uint8Array, addr: bigint, count: number): Uint8Array;
  writeRequest(addr: bigint, data: Uint8Array): Uint8Array;
  checkWriteReply(payload: Uint8Array, addr: bigint, count: number): void;
}

const HEAD = vfio_user_dma_region_access.size; // { u64 address; u64 count }

function echoes(what: string, payload: Uint8Array, addr: bigint, count: number, countBytes: 4 | 8): void {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const a = view.getBigUint64(0, true);
  const c = countBytes === 8 ? view.getBigUint64(8, true) : BigInt(view.getUint32(8, true));
  if (a !== addr || c !== BigInt(count)) {
    throw new Error(
      `${what} reply names address 0x${a.toString(16)} count ${c}, the request 0x${addr.toString(16)} count ${count}`,
    );
  }
}

/** vfio-user.rst's tables and libvfio-user's struct vfio_user_dma_region_access. */
export const SPEC_LAYOUT: PeerDmaLayout = {
  readRequest: (addr, count) => vfio_user_dma_region_access.encode({ addr, count: BigInt(count) }),
  readReply(payload, addr, count) {
    if (payload.byteLength !== HEAD + count) {
      throw new Error(`DMA_READ reply is ${payload.byteLength} bytes, must be ${HEAD} + ${count}`);
    }
    echoes('DMA_READ', payload, addr, count, 8);
    // A plain Uint8Array over the received message's bytes (its own: no copy), not the Buffer it came as.
    return new Uint8Array(payload.buffer, payload.byteOffset + HEAD, count);
  },
  writeRequest(addr, data) {
    const out = new Uint8Array(HEAD + data.byteLength);
    vfio_user_dma_region_access.encode({ addr, count: BigInt(data.byteLength) }, out);
    out.set(data, HEAD);
    return out;
  },
  checkWriteReply(payload, addr, count) {
    // Liberal: QEMU 11.1 (hw/vfio-user/pci.c) answers with the header alone; the spec's table gives count 4
    // bytes (12 in all); libvfio-user sends its 16-byte struct. Whatever head there is must echo the request.
    if (payload.byteLength === 0) return;
    if (payload.byteLength === 12) return echoes('DMA_WRITE', payload, addr, count, 4);
    if (payload.byteLength === 16) return echoes('DMA_WRITE', payload, addr, count, 8);
    throw new Error(`DMA_WRITE reply is ${payload.byteLength} bytes, must be 0, 12 or 16`);
  },
};

/** What the commands need of their connection. */
export interface PeerChannel {
  /** Send one message; throws when the socket is gone. */
  send(bytes: Uint8Array): void;
  log(message: string): void;
  /** The client left too many timed-out commands unanswered: the connection must end. */
  cut(reason: string): void;
  /** The outstanding count moved (the connection keeps reading while a reply is awaited). */
  changed(): void;
}

interface Outstanding {
  command: number;
  what: string;
  /** Settles the command with the reply's payload (throws, unsettled, when it is malformed). */
  decode(payload: Uint8Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** What another process needs to carry a connection's commands on (a broker upgrade: none outstanding). */
export interface PeerDmaState {
  nextId: number;
  /** Ids of commands that timed out: a late reply to one is dropped there too, not taken for a stray. */
  timedOut: number[];
}

/** Longest deadline setTimeout takes. */
const MAX_TIMEOUT_MS = 0x7fff_ffff;

/** One connection's server-to-client commands: msg_ids of its own, replies matched among its outstanding ones. */
export class PeerCommands implements PeerDma {
  readonly maxTransfer: number;
  readonly #channel: PeerChannel;
  readonly #layout: PeerDmaLayout;
  #nextId = 0;
  readonly #outstanding = new Map<number, Outstanding>();
  readonly #timedOut = new Set<number>();
  #closed: string | null = null;

  constructor(channel: PeerChannel, maxTransfer: number, layout: PeerDmaLayout = SPEC_LAYOUT) {
    this.#channel = channel;
    this.maxTransfer = maxTransfer;
    this.#layout = layout;
  }

  /** Commands sent and not yet answered, timed out or failed. */
  get outstanding(): number {
    return this.#outstanding.size;
  }

  get lateReplies(): number {
    return this.#timedOut.size;
  }

  /** For a process that carries the connection on (adopt there); only with nothing outstanding. */
  handover(): PeerDmaState {
    return { nextId: this.#nextId, timedOut: [...this.#timedOut] };
  }

  /** Carry on from another process's handover(): its late replies are dropped here, its ids not reused. */
  adopt(state: PeerDmaState): void {
    this.#nextId = state.nextId & 0xffff;
    for (const id of state.timedOut.slice(0, MAX_TIMED_OUT_IDS)) this.#timedOut.add(id & 0xffff);
  }

  read(addr: bigint, count: number, timeoutMs: number): Promise<Uint8Array> {
    const name = 'VFIO_USER_DMA_READ';
    try {
      this.#check(name, addr, count, timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#issue(
      P.VFIO_USER_DMA_READ,
      `${name} of ${range(addr, count)}`,
      this.#layout.readRequest(addr, count),
      timeoutMs,
      (payload) => this.#layout.readReply(payload, addr, count),
    );
  }

  write(addr: bigint, data: Uint8Array, timeoutMs: number): Promise<void> {
    const name = 'VFIO_USER_DMA_WRITE';
    const count = data.byteLength;
    try {
      this.#check(name, addr, count, timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#issue(
      P.VFIO_USER_DMA_WRITE,
      `${name} of ${range(addr, count)}`,
      this.#layout.writeRequest(addr, data),
      timeoutMs,
      (payload) => this.#layout.checkWriteReply(payload, addr, count),
    );
  }

  #check(name: string, addr: bigint, count: number, timeoutMs: number): void {
    if (!Number.isSafeInteger(count) || count <= 0)
      throw new VfioError('EINVAL', `${name} of ${count} bytes`);
    if (count > this.maxTransfer) {
      throw new VfioError('E2BIG', `${name} of ${count} bytes: the client takes at most ${this.maxTransfer}`);
    }
    if (typeof addr !== 'bigint' || addr < 0n || addr + BigInt(count) > 1n << 64n) {
      throw new VfioError('EINVAL', `${name} at ${String(addr)}: not inside the 64-bit address space`);
    }
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_TIMEOUT_MS) {
      throw new VfioError('EINVAL', `${name}: timeout ${timeoutMs} ms is not in (0, ${MAX_TIMEOUT_MS}]`);
    }
  }

  /** The command's own promise, no then() hop after it: a close's EPIPE reaches the model before disconnected(). */
  #issue<T>(
    command: number,
    what: string,
    payload: Uint8Array,
    timeoutMs: number,
    decode: (payload: Uint8Array) => T,
  ): Promise<T> {
    if (this.#closed !== null) {
      return Promise.reject(new VfioError('EPIPE', `${what}: the connection is closed (${this.#closed})`));
    }
    if (this.#outstanding.size >= MAX_PEER_COMMANDS) {
      return Promise.reject(
        new VfioError(
          'EBUSY',
          `${what}: ${MAX_PEER_COMMANDS} commands to the client are already outstanding`,
        ),
      );
    }
    const msgId = this.#allocateId();
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => this.#expire(msgId), timeoutMs);
      this.#outstanding.set(msgId, {
        command,
        what,
        decode: (p) => resolve(decode(p)),
        reject,
        timer,
      });
      try {
        this.#channel.send(encodeCommand(msgId, command, payload));
      } catch (err) {
        clearTimeout(timer);
        this.#outstanding.delete(msgId);
        reject(new VfioError('EPIPE', `${what}: sending it failed: ${(err as Error).message}`));
        return;
      }
      this.#channel.changed();
    });
  }

  /** Never an id outstanding or awaiting a late reply: there are at most 16 + 1024 of those among 65,536. */
  #allocateId(): number {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = (this.#nextId + 1) & 0xffff;
      if (!this.#outstanding.has(id) && !this.#timedOut.has(id)) return id;
    }
  }

  #expire(msgId: number): void {
    const o = this.#outstanding.get(msgId);
    if (!o) return;
    this.#outstanding.delete(msgId);
    this.#timedOut.add(msgId);
    o.reject(new VfioError('ETIMEDOUT', `${o.what}: the client did not answer in time (msg_id ${msgId})`));
    this.#channel.changed();
    if (this.#timedOut.size > MAX_TIMED_OUT_IDS) {
      this.#channel.cut(
        `the client left ${this.#timedOut.size} timed-out DMA commands unanswered (at most ${MAX_TIMED_OUT_IDS} may wait for a late reply)`,
      );
    }
  }

  /**
   * A reply from the client: answers its command, or is a late one to a timed-out command (dropped). False: it
   * answers nothing this connection sent (the caller closes the connection). `extra`: what came with it besides
   * bytes (fds), which makes it malformed.
   */
  route(msg: VfioUserMessage, extra: string | null): boolean {
    const o = this.#outstanding.get(msg.msgId);
    if (!o) return this.#timedOut.delete(msg.msgId);
    this.#outstanding.delete(msg.msgId);
    clearTimeout(o.timer);
    try {
      if (msg.command !== o.command) {
        throw new Error(`the reply to msg_id ${msg.msgId} is for ${P.commandName(msg.command)}`);
      }
      if (extra !== null) throw new Error(`the reply carried ${extra}`);
      if (isError(msg)) {
        // As the client names a server's errno (channel.ts): its name on this host, EIO for none.
        const errno = msg.errorNo || ERRNO.EIO;
        const code = errnoName(errno);
        o.reject(new VfioError(code, `${o.what}: the client refused it: ${code} (errno ${errno})`, errno));
      } else {
        o.decode(msg.payload);
      }
    } catch (err) {
      // A malformed reply fails its command alone: the stream is still framed, the connection sound.
      this.#channel.log(`malformed reply to ${o.what}: ${(err as Error).message}`);
      o.reject(new VfioError('EPROTO', `${o.what}: malformed reply: ${(err as Error).message}`));
    }
    this.#channel.changed();
    return true;
  }

  /** The connection is closing: every outstanding command fails EPIPE, and later ones at once. How many failed. */
  close(reason: string): number {
    if (this.#closed !== null) return 0;
    this.#closed = reason;
    const all = [...this.#outstanding.values()];
    this.#outstanding.clear();
    this.#timedOut.clear();
    for (const o of all) {
      clearTimeout(o.timer);
      o.reject(new VfioError('EPIPE', `${o.what}: the connection closed (${reason})`));
    }
    return all.length;
  }
}

/**
 * A connection's commands, given to its model (`peerDma`, called once VERSION has succeeded). At most the smaller
 * of both sides' max_data_xfer_size a command: a DMA_READ reply must fit this server's receive buffer, which is
 * sized for its own (server.ts listen). A model that throws gets nothing (the caller refuses the VERSION).
 */
export function offerPeerDma(
  model: { peerDma?(dma: PeerDma): void },
  peer: { maxDataXferSize: number },
  server: { maxDataXferSize: number },
  channel: PeerChannel,
): PeerCommands {
  const dma = new PeerCommands(channel, Math.min(peer.maxDataXferSize, server.maxDataXferSize));
  try {
    model.peerDma?.(dma);
  } catch (err) {
    dma.close('the model refused its DMA access');
    throw err;
  }
  return dma;
}

function range(addr: bigint, count: number): string {
  return `[0x${addr.toString(16)}, 0x${(addr + BigInt(count)).toString(16)})`;
}
