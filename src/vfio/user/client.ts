// A vfio-user client: negotiates the version, then offers one typed call per
// command, checking each reply's shape. The request/reply machinery
// (pipelining, timeouts, disconnects) is channel.ts; serving the server's
// DMA_READ/DMA_WRITE from the client's maps is dma-maps.ts; the device
// queries (info, region info, irq info, io fds, features) are client-queries.ts;
// region reads and writes split into messages are client-region-access.ts.
import { EventEmitter } from 'node:events';
import { misuse, VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { MAX_FDS } from '../../sys/native.js';
import { type CallOptions, type FdLike, type ReplyMessage, RequestChannel } from './channel.js';
import * as Q from './client-queries.js';
import { closeAll, type RegionInfo } from './client-queries.js';
import * as Access from './client-region-access.js';
import type { VfioUserMessage } from './codec.js';
import { bufferMemory, ClientDmaMaps, type DmaMemory } from './dma-maps.js';
import { encodeIrqSet, irqSetArgs, vfio_user_dma_map, vfio_user_dma_unmap } from './messages.js';
import * as P from './protocol.js';
import type { IoFdSubRegion } from './region-io-fds.js';
import { connectVfioUser, type MessageSocket } from './transport.js';
import { type Capabilities, readCapabilities, readVersionReply, versionRequest } from './version.js';

export interface VfioUserClientOptions {
  /** Default timeout of every call, negotiation included. Default 5000 ms. */
  timeoutMs?: number;
  /** Extra members of our "capabilities" object (vendor keys such as "devlease" included). */
  capabilities?: Record<string, unknown>;
  /**
   * Close the fds of the maps a DMA_UNMAP took away once the caller of dmaUnmap() has gone on (sys/fd.ts
   * closeSoon), not before it resolves. Default false: when dmaUnmap() resolves, this client holds nothing of
   * those maps. The broker sets it (VfioUserDevice): its reclaim's window unmap is the last close of a killed
   * client's DMA memory. In a worker thread they are closed at once (closeSoon).
   */
  closeUnmappedSoon?: boolean;
}

export type { RegionInfo } from './client-queries.js';

/** Each request's deadline unless `timeoutMs` says otherwise. */
export const DEFAULT_TIMEOUT_MS = 5000;

export interface VfioUserClientHandover {
  version: { major: number; minor: number };
  /** The server's VERSION capabilities object, as it sent it. */
  serverCapabilities: Record<string, unknown>;
  errorReasons: boolean;
  sequence: { nextId: number; abandoned: number[] };
  /**
   * The DMA maps recorded to serve the server's DMA_READ/DMA_WRITE, each fd named by its index in the
   * handover's fd list, -1 for a map served from memory (added in state version 1; absent: none carried).
   */
  dmaMaps?: { iova: bigint; size: bigint; flags: number; offset: bigint; fd: number }[];
}

export class VfioUserClient extends EventEmitter {
  /** What the server advertised in its VERSION reply. */
  serverCapabilities!: Capabilities;
  version!: { major: number; minor: number };
  #channel: RequestChannel;
  #ourMaxXfer = P.DEFAULT_MAX_DATA_XFER_SIZE;
  /** What each DMA_MAP made available to the server, to serve its DMA_READ/DMA_WRITE from. */
  #dma: ClientDmaMaps;

  /** Connect to a vfio-user server's socket path and negotiate. */
  static async connect(path: string, opts: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    return VfioUserClient.fromSocket(connectVfioUser(path), opts);
  }

  /** Negotiate over an already-connected socket (the client takes ownership; it is closed on failure). */
  static async fromSocket(socket: MessageSocket, opts: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    const client = new VfioUserClient(socket, opts);
    try {
      await client.#negotiate(opts.capabilities ?? {});
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  /**
   * Carry on a connection another process negotiated (a broker upgrade hands its device connection over):
   * no VERSION exchange; the server's capabilities, the msg_id sequence and the DMA maps come from `state`
   * (`take` gives the fd the state names by index, owned from then on).
   */
  static adopt(
    socket: MessageSocket,
    state: VfioUserClientHandover,
    opts: VfioUserClientOptions = {},
    take?: (index: number) => Fd,
    /** What a map handed over without an fd (fd -1) is served from. */
    memoryFor?: (iova: bigint) => DmaMemory,
  ): VfioUserClient {
    const client = new VfioUserClient(socket, opts);
    client.version = state.version;
    client.serverCapabilities = readCapabilities({ capabilities: state.serverCapabilities });
    client.#channel.errorReasons = state.errorReasons;
    client.#channel.continueSequence(state.sequence);
    for (const m of state.dmaMaps ?? []) {
      if (m.fd < 0 && !memoryFor)
        throw new Error(
          `the DMA map at 0x${m.iova.toString(16)} was handed over without an fd or its memory`,
        );
      if (m.fd >= 0 && !take) throw new Error('the DMA maps handed over need their fds');
      client.#dma.adopt(
        m.fd < 0 ? { ...m, fd: null, memory: memoryFor!(m.iova) } : { ...m, fd: take!(m.fd) },
      );
    }
    return client;
  }

  /**
   * What adopt() needs to carry this connection on in another process; `add` names each DMA map's fd (still
   * owned here) by its index in the fds sent along. A map served from memory goes as fd -1: the adopting
   * process says what serves it (adopt's `memoryFor`).
   */
  handover(add: (fd: Fd) => number): VfioUserClientHandover {
    const dmaMaps = this.#dma.entries().map((e) => ({
      iova: e.iova,
      size: e.size,
      flags: e.flags,
      offset: e.offset,
      fd: e.fd ? add(e.fd) : -1,
    }));
    return {
      version: this.version,
      serverCapabilities: this.serverCapabilities.raw,
      errorReasons: this.#channel.errorReasons,
      sequence: this.#channel.sequence(),
      dmaMaps,
    };
  }

  /**
   * Runs `fn` (which issues calls without awaiting them, e.g. `p1 = c.regionWrite(...); p2 = c.regionRead(...)`);
   * the requests it sends without fds go in one sendmsg when it returns, in the order issued. Each keeps its
   * own deadline and reply. A request with fds goes in its own sendmsg, after those before it.
   */
  batch<T>(fn: () => T): T {
    return this.#channel.batch(fn);
  }

  /**
   * After another process used this connection and went (an upgrade rolled back): its late replies are
   * dropped until a DEVICE_GET_INFO of ours is answered (RequestChannel.resync).
   */
  resync(opts?: CallOptions): Promise<void> {
    return this.#channel.resync(() => this.deviceInfo(opts));
  }

  /** Calls waiting for their reply. */
  get pendingCount(): number {
    return this.#channel.pendingCount;
  }

  /** The connection's socket (a handover sends its descriptor on). */
  readonly socket: MessageSocket;

  private constructor(socket: MessageSocket, opts: VfioUserClientOptions) {
    super();
    this.socket = socket;
    this.#dma = new ClientDmaMaps(this.#ourMaxXfer, opts.closeUnmappedSoon ?? false);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#channel = new RequestChannel(socket, timeoutMs, (msg, at) => this.#serveCommand(msg, at));
    // 'close' carries the reason: null after close(), an ECONNRESET/EPROTO error otherwise.
    this.#channel.on('close', (reason: Error | null) => {
      this.#dma.clear();
      this.emit('close', reason);
    });
    // A server-to-client command we refused (its errno went back in the reply): for diagnostics.
    this.#channel.on('commandRefused', (err: Error) => this.emit('commandRefused', err));
  }

  /** Server-to-client commands: DMA_READ/DMA_WRITE of what this client mapped. */
  #serveCommand(msg: VfioUserMessage, receivedAt: number): Promise<Uint8Array> {
    if (msg.command === P.VFIO_USER_DMA_READ) return this.#dma.read(msg.payload, receivedAt);
    if (msg.command === P.VFIO_USER_DMA_WRITE) return this.#dma.write(msg.payload, receivedAt);
    throw new VfioError('ENOTSUP', `${P.commandName(msg.command)} is not a server-to-client command`);
  }

  /** Of those, the maps without an fd (served from memory the caller gave). */
  get dmaMapsWithoutFd(): number {
    return this.#dma.entries().filter((e) => !e.fd).length;
  }

  /** How many DMA maps this client is ready to serve DMA_READ/DMA_WRITE for. */
  get dmaMapCount(): number {
    return this.#dma.size;
  }

  get closed(): boolean {
    return this.#channel.closed;
  }

  /** The server's DMA_READ/DMA_WRITE received and not answered yet. */
  get commandsWaiting(): number {
    return this.#channel.commandsWaiting;
  }

  /**
   * Send one command and wait for its reply (payload, and fds the caller then owns).
   * Rejects with the server's errno as `code`, ETIMEDOUT, ECONNRESET or EPROTO.
   */
  request(
    command: number,
    payload?: Uint8Array,
    fds: FdLike[] = [],
    opts: CallOptions = {},
  ): Promise<ReplyMessage> {
    return this.#channel.request(command, payload, fds, opts);
  }

  /** Close the connection (idempotent). Pending calls reject with ERR_DEVLEASE_CLOSED. */
  close(): void {
    this.#channel.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #fail(err: Error): Error {
    return this.#channel.fail(err);
  }

  /** What the device queries (client-queries.ts) use of this client. */
  readonly #requester: Q.Requester = {
    request: (command, payload, fds, opts) => this.request(command, payload, fds, opts),
    fail: (err) => this.#fail(err),
  };

  async #negotiate(extra: Record<string, unknown>): Promise<void> {
    // What we accept: region io fds come one per queue page of a device, and the socket takes up to MAX_FDS.
    const r = await this.request(
      P.VFIO_USER_VERSION,
      versionRequest({ max_msg_fds: MAX_FDS, ...extra }, this.#ourMaxXfer),
    );
    closeAll(r.fds); // twin-socket is never requested, so no fd is expected
    try {
      const v = readVersionReply(r.payload);
      this.version = { major: v.major, minor: v.minor };
      this.serverCapabilities = v.capabilities;
      this.#channel.errorReasons = v.errorReasons;
    } catch (err) {
      throw this.#fail(err as Error);
    }
  }

  // ---- typed calls -------------------------------------------------------
  // The device queries are client-queries.ts: each is one request and its reply's shape check.

  deviceInfo(opts?: CallOptions): Promise<{ flags: number; num_regions: number; num_irqs: number }> {
    return Q.deviceInfo(this.#requester, opts);
  }

  /** Region info with its capability chain; retries once with the argsz the server asks for. */
  regionInfo(index: number, opts: CallOptions & { argsz?: number } = {}): Promise<RegionInfo> {
    return Q.regionInfo(this.#requester, index, opts);
  }

  irqInfo(index: number, opts?: CallOptions): Promise<{ index: number; flags: number; count: number }> {
    return Q.irqInfo(this.#requester, index, opts);
  }
  /** Largest count per REGION_READ/WRITE message: the smaller of both sides' max_data_xfer_size. */
  get maxTransfer(): number {
    return Math.min(this.serverCapabilities.maxDataXferSize, this.#ourMaxXfer);
  }

  /** Read `count` bytes, split into pipelined messages of at most maxTransfer bytes (client-region-access.ts). */
  regionRead(index: number, offset: bigint | number, count: number, opts?: CallOptions): Promise<Buffer> {
    return Access.regionRead(this.#requester, this.maxTransfer, index, offset, count, opts);
  }

  /** Write `data`, split into pipelined messages of at most maxTransfer bytes. */
  regionWrite(index: number, offset: bigint | number, data: Uint8Array, opts?: CallOptions): Promise<void> {
    return Access.regionWrite(this.#requester, this.maxTransfer, index, offset, data, opts);
  }

  /**
   * Map memory for device DMA. `fd` (kept by the caller) makes it directly mappable by the server; the
   * client keeps its own duplicate until the unmap, to serve the server's DMA_READ/DMA_WRITE (which the
   * spec lets a server use even on mappable memory). A map without an fd is served from `memory` (a
   * buffer of at least `size` bytes, or read/write callbacks); without either, such accesses get EFAULT.
   * `flags` (VFIO_USER_F_DMA_REGION_READ/WRITE) also bound what the server may do by message.
   */
  async dmaMap(
    m: {
      fd?: FdLike | null;
      offset?: bigint | number;
      iova: bigint | number;
      size: bigint | number;
      flags: number;
      memory?: DmaMemory | Uint8Array;
    },
    opts?: CallOptions,
  ): Promise<void> {
    const iova = BigInt(m.iova);
    const size = BigInt(m.size);
    const offset = BigInt(m.offset ?? 0);
    if (m.memory && m.fd != null) throw invalidArg('dmaMap takes an fd or memory, not both');
    if (m.memory instanceof Uint8Array && BigInt(m.memory.byteLength) < size) {
      throw invalidArg(`dmaMap memory is ${m.memory.byteLength} bytes, smaller than the map's ${size}`);
    }
    const memory = m.memory instanceof Uint8Array ? bufferMemory(m.memory) : (m.memory ?? null);
    const payload = vfio_user_dma_map.encode({
      argsz: vfio_user_dma_map.size,
      flags: m.flags,
      offset,
      addr: iova,
      size,
    });
    const entry = this.#dma.add({ iova, size, flags: m.flags, fd: m.fd ?? null, offset, memory });
    try {
      const r = await this.request(P.VFIO_USER_DMA_MAP, payload, m.fd == null ? [] : [m.fd], opts);
      closeAll(r.fds);
    } catch (err) {
      this.#dma.remove(entry);
      throw err;
    }
  }

  async dmaUnmap(
    u: { iova: bigint | number; size: bigint | number; flags?: number },
    opts?: CallOptions,
  ): Promise<void> {
    const payload = vfio_user_dma_unmap.encode({
      argsz: vfio_user_dma_unmap.size,
      flags: u.flags ?? 0,
      addr: BigInt(u.iova),
      size: BigInt(u.size),
    });
    const r = await this.request(P.VFIO_USER_DMA_UNMAP, payload, [], opts);
    closeAll(r.fds);
    const all = ((u.flags ?? 0) & P.VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    this.#dma.removeRange(BigInt(u.iova), BigInt(u.size), all);
  }

  /**
   * SET_IRQS. With DATA_EVENTFD, `fds` is either all present (count eventfds, kept by the caller)
   * or all null/empty (de-assign): vfio-user carries fds only as SCM_RIGHTS, so a mix cannot be sent.
   */
  async setIrqs(
    s: {
      flags: number;
      index: number;
      start: number;
      count: number;
      fds?: (FdLike | null)[];
      bools?: Uint8Array;
    },
    opts?: CallOptions,
  ): Promise<void> {
    // The server takes at most max_msg_fds fds a message (vfio-user.rst, "Version"; libvfio-user: 8): more
    // eventfds go in several messages, each for its part of the vectors, as QEMU sends them.
    const { fds, data } = irqSetArgs(s); // the whole request checked before any part of it goes
    const most = this.serverCapabilities.maxMsgFds;
    const n = fds.length;
    if (n > most) {
      if (most < 1)
        throw new VfioError(
          'ENOSPC',
          `the server takes no fds (max_msg_fds 0): SET_IRQS cannot send ${n} eventfds`,
        );
      for (let at = 0; at < s.count; at += most) {
        const count = Math.min(most, s.count - at);
        await this.setIrqs({ ...s, start: s.start + at, count, fds: s.fds!.slice(at, at + count) }, opts);
      }
      return;
    }
    const r = await this.request(P.VFIO_USER_DEVICE_SET_IRQS, encodeIrqSet(s, data), fds, opts);
    closeAll(r.fds);
  }

  async reset(opts?: CallOptions): Promise<void> {
    const r = await this.request(P.VFIO_USER_DEVICE_RESET, undefined, [], opts);
    closeAll(r.fds);
  }

  /**
   * DEVICE_FEATURE. `flags` holds GET/SET/PROBE; `feature` the index. The reply's data and fds
   * (owned by the caller) come back. `replyCapacity` bounds the reply data (argsz); default 4096.
   */
  feature(
    f: { flags: number; feature: number; data?: Uint8Array; fds?: FdLike[]; replyCapacity?: number },
    opts?: CallOptions,
  ): Promise<{ flags: number; data: Uint8Array; fds: Fd[] }> {
    return Q.feature(this.#requester, f, opts);
  }

  /**
   * VFIO_USER_DEVICE_GET_REGION_IO_FDS: the region's io fd sub-regions and the fds they index (the caller
   * owns them). Asks again once with the argsz the server says a full reply needs.
   */
  regionIoFds(
    index: number,
    opts: CallOptions & { argsz?: number } = {},
  ): Promise<{ subRegions: IoFdSubRegion[]; fds: Fd[] }> {
    return Q.regionIoFds(this.#requester, index, opts);
  }
}

function invalidArg(message: string): Error {
  return misuse('ERR_DEVLEASE_INVALID_ARG', message);
}
