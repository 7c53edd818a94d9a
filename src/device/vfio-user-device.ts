// Device over vfio-user: the broker is the vfio-user client of the device
// (the SA-1 simulator, or any vfio-user server). Slices come from the
// dma-buf feature (11) and are revoked with feature 13 — a devlease/SA-1
// extension that exists only over vfio-user (in the kernel, 13 is s390's
// ZPCI_ERROR feature; see docs/PROTOCOL.md): vfio-user-slices.ts, which also
// asks slices ahead of their grant. Region io fds are io-fd-cache.ts.

import { EventEmitter } from 'node:events';
import { closedError as closedHandleError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { StreamSocket } from '../sys/stream-socket.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
} from '../vfio/uapi/vfio.js';
import {
  DEFAULT_TIMEOUT_MS,
  VfioUserClient,
  type VfioUserClientHandover,
  type VfioUserClientOptions,
} from '../vfio/user/client.js';
import { type DmaMemory, memoryServedLater } from '../vfio/user/dma-maps.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../vfio/user/protocol.js';
import type { IoFdSubRegion, RegionIoFds } from '../vfio/user/region-io-fds.js';
import { DEFAULT_MAX_MESSAGE, VFIO_USER_FRAMING } from '../vfio/user/transport.js';
import type {
  Device,
  DeviceRegion,
  DmaMapping,
  IovaRange,
  Reconnectable,
  RevokeOptions,
  Transport,
} from './device.js';
import { IoFdCache } from './io-fd-cache.js';
import type { SliceRange } from './prepared-slices.js';
import { describe, formatIds } from './vfio-user-describe.js';
import { VfioUserSlices } from './vfio-user-slices.js';

/** A vfio-user device connection as a broker upgrade hands it over (JSON; the socket travels as an fd). */
export interface VfioUserDeviceHandover {
  endpoint: string;
  client: VfioUserClientHandover;
  /** Bytes of a message read but not yet whole (base64). */
  partial: string;
  ids: Device['ids'];
  numRegions: number;
  numIrqs: number;
  capabilities: { mappableSlices: boolean; revocableSlices: boolean };
  /** Whether the device reports a reset method (absent from an older broker: assumed). */
  resettable?: boolean;
  /** The io fds asked of the device per region (fd indexes in the handover's list; absent: none carried). */
  ioFds?: { index: number; subRegions: IoFdSubRegion[]; fds: number[] }[];
}

export class VfioUserDevice extends EventEmitter implements Device, Reconnectable {
  readonly transport: Transport = 'vfio-user';
  readonly path: { chosen: string; reason: string };
  readonly endpoint: string;
  ids!: Device['ids'];
  numRegions = 0;
  numIrqs = 0;
  resettable = true;
  capabilities = { mappableSlices: false, revocableSlices: false };
  readonly #ranges: IovaRange[];
  /** Region io fds of the current connection's device (see regionIoFds). */
  readonly #ioFds = new IoFdCache((index) => this.client.regionIoFds(index));
  /** Slice fds: asked, revoked, and asked ahead of their grant (prepareSliceFds) on the current connection. */
  readonly #slices = new VfioUserSlices(() => this.client);
  readonly #opts: VfioUserClientOptions;
  #client: VfioUserClient;
  /** A reconnect's new connection while it is being checked (close() closes it too). */
  #joining: VfioUserClient | null = null;
  /** Connections reconnect() let go of on purpose: their 'close' is no news. */
  readonly #dropped = new WeakSet<VfioUserClient>();
  #closed = false;

  private constructor(client: VfioUserClient, socketPath: string, opts: VfioUserClientOptions) {
    super();
    this.#client = client;
    this.endpoint = socketPath;
    this.#opts = opts;
    this.path = {
      chosen: `vfio-user:${socketPath}`,
      reason: 'a vfio-user server (e.g. the SA-1 simulator) was named',
    };
    // vfio-user has no IOVA-range query; the IOMMU model is 48-bit unless the server says otherwise.
    this.#ranges = [{ start: 0n, last: (1n << 48n) - 1n }];
    this.#adopt(client);
  }

  /** The current connection. Once it is lost every call on it fails at once (ECONNRESET) until reconnect(). */
  get client(): VfioUserClient {
    return this.#client;
  }

  /** Each request's deadline: the connection's timeoutMs (a reconnect keeps it). */
  get requestTimeoutMs(): number {
    return this.#opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  get connected(): boolean {
    return !this.#closed && !this.#client.closed;
  }

  static async connect(socketPath: string, options: VfioUserClientOptions = {}): Promise<VfioUserDevice> {
    const opts = brokerClientOptions(options);
    const client = await VfioUserClient.connect(socketPath, opts);
    const dev = new VfioUserDevice(client, socketPath, opts);
    try {
      Object.assign(dev, await describe(client));
    } catch (err) {
      client.close();
      throw err;
    }
    return dev;
  }

  /**
   * Carry on the device connection another broker process had (an upgrade, src/broker/handover): `fd` is
   * that connection's socket, `state` what handover() said of it there. No VERSION, no describe round trip.
   */
  static adopt(
    fd: Fd,
    state: VfioUserDeviceHandover,
    options: VfioUserClientOptions = {},
    take?: (index: number) => Fd,
  ): VfioUserDevice {
    const opts = brokerClientOptions(options);
    const socket = new StreamSocket(fd, {
      framing: VFIO_USER_FRAMING,
      maxMessage: DEFAULT_MAX_MESSAGE,
      partial: { data: Buffer.from(state.partial, 'base64'), fds: [] },
    });
    // A map without an fd is served by whatever the broker relays there once it has adopted its leases.
    const client = VfioUserClient.adopt(socket, state.client, opts, take, (iova) =>
      memoryServedLater(() => dev.relayedMemory, iova),
    );
    const dev = new VfioUserDevice(client, state.endpoint, opts);
    dev.ids = state.ids;
    dev.numRegions = state.numRegions;
    dev.numIrqs = state.numIrqs;
    dev.capabilities = state.capabilities;
    dev.resettable = state.resettable ?? true; // a broker before 'resettable' handed over none
    if (state.ioFds?.length && !take) throw new Error('the io fds handed over need their fds');
    for (const r of state.ioFds ?? []) {
      dev.#ioFds.adopt(r.index, { subRegions: r.subRegions, fds: r.fds.map((i) => take!(i)) });
    }
    return dev;
  }

  /**
   * What adopt() needs, and the connection's descriptor (still owned here). Only between calls: the caller
   * has waited for every call to be answered (pendingCount 0), so no reply is owed on this connection.
   */
  handover(add: (fd: Fd) => number): { state: VfioUserDeviceHandover; fd: Fd } {
    // The slices may change hands before this connection is used here again (the next process revokes).
    this.#slices.forgetPrepared();
    const socket = this.#client.socket as StreamSocket;
    const partial = socket.partial();
    if (partial.fds.length) throw new Error('the device connection is mid-message with fds: not now');
    return {
      fd: socket.fd,
      state: {
        endpoint: this.endpoint,
        client: this.#client.handover(add),
        partial: partial.data.toString('base64'),
        ids: this.ids,
        numRegions: this.numRegions,
        numIrqs: this.numIrqs,
        capabilities: this.capabilities,
        resettable: this.resettable,
        ioFds: this.#ioFds.known().map(([index, io]) => ({
          index,
          subRegions: io.subRegions,
          fds: io.fds.map(add),
        })),
      },
    };
  }

  /**
   * Take `client` as the current connection. Every connection, the first and each reconnected one, passes
   * here: per-connection setup belongs here. 'close' is passed on with its reason for the current one only
   * (a replaced connection going away is no news).
   */
  #adopt(client: VfioUserClient): void {
    this.#client = client;
    client.on('close', (reason: Error | null) => {
      // The io fds came from this connection's device (a restarted one has others).
      if (client === this.#client) this.#dropConnectionState();
      if (client === this.#client && !this.#dropped.has(client)) this.emit('close', reason);
    });
  }

  abandon(reason: Error): void {
    const client = this.#client;
    if (this.#closed || client.closed || this.#dropped.has(client)) return;
    // Marked dropped so its own 'close' (reason-less) is not passed on: this one, with the reason, is.
    this.#dropped.add(client);
    this.#dropConnectionState();
    client.close();
    this.emit('close', reason);
  }

  async reconnect(): Promise<void> {
    if (this.#closed) throw closedError(this.endpoint);
    const old = this.#client;
    // Until the new connection is checked, calls keep failing at once on the old, closed one.
    this.#dropped.add(old);
    this.#dropConnectionState();
    old.close();
    const client = await VfioUserClient.connect(this.endpoint, this.#opts);
    if (this.#closed) {
      client.close();
      throw closedError(this.endpoint);
    }
    this.#joining = client;
    try {
      const d = await describe(client);
      const was = formatIds(this.ids);
      const now = formatIds(d.ids);
      if (was !== now) {
        throw Object.assign(
          new Error(`${this.path.chosen} now serves ${now}, not the ${was} first opened; not taking it`),
          { code: 'ENODEV' },
        );
      }
      if (this.#closed) throw closedError(this.endpoint);
      Object.assign(this, d);
    } catch (err) {
      client.close();
      throw err;
    } finally {
      this.#joining = null;
    }
    this.#adopt(client);
    // It may have gone again while we checked it: say so now, or nobody would.
    if (client.closed) {
      this.emit('close', new Error('the device connection closed while reconnecting'));
      return;
    }
    // The old connection's io fds are closed; the new one's are fetched now, not at the next grant: a
    // reconnect leaves the broker holding what it held before (the same number of ioeventfds, not none
    // until some lease asks), and the first grant after it costs no device round trip. Best effort: a
    // failure leaves the region uncached, to be asked at the next grant as before.
    await this.#ioFds.refetch();
  }

  async region(index: number): Promise<DeviceRegion> {
    const r = await this.client.regionInfo(index);
    r.fd?.close(); // the broker never maps whole regions; slices come from sliceFds()
    return {
      index,
      flags: r.flags,
      size: r.size,
      offset: r.offset,
      ...(r.caps.sparseMmap
        ? { sparse: r.caps.sparseMmap.map((a) => ({ offset: a.offset, size: a.size })) }
        : {}),
      ...(r.caps.type ? { type: r.caps.type } : {}),
    };
  }

  read(index: number, offset: bigint | number, count: number): Promise<Uint8Array> {
    return this.client.regionRead(index, offset, count);
  }
  write(index: number, offset: bigint | number, data: Uint8Array): Promise<void> {
    return this.client.regionWrite(index, offset, data);
  }
  async read32(index: number, offset: number): Promise<number> {
    const b = await this.client.regionRead(index, offset, 4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
  }
  write32(index: number, offset: number, value: number): Promise<void> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    return this.client.regionWrite(index, offset, b);
  }
  async read64(index: number, offset: number): Promise<bigint> {
    const b = await this.client.regionRead(index, offset, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }
  write64(index: number, offset: number, value: bigint): Promise<void> {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value, true);
    return this.client.regionWrite(index, offset, b);
  }

  /**
   * Runs `fn`, which issues device commands without awaiting them; those without fds reach the device in one
   * sendmsg when it returns, in the order issued (one wake-up of the device for the lot, issue 16).
   */
  batch<T>(fn: () => T): T {
    return this.#client.closed ? fn() : this.#client.batch(fn);
  }

  iovaRanges(): IovaRange[] {
    return this.#ranges;
  }

  dmaMap(m: DmaMapping): Promise<void> {
    return this.client.dmaMap({ fd: m.fd, offset: m.offset, iova: m.iova, size: m.size, flags: dmaFlags(m) });
  }

  relayedMemory: ((iova: bigint) => DmaMemory) | null = null;

  dmaMapWithoutFd(m: Omit<DmaMapping, 'fd' | 'offset'>): Promise<void> {
    const memory = memoryServedLater(() => this.relayedMemory, m.iova);
    return this.client.dmaMap({ iova: m.iova, size: m.size, flags: dmaFlags(m), memory });
  }
  dmaUnmap(iova: bigint, size: bigint): Promise<void> {
    return this.client.dmaUnmap({ iova, size });
  }

  async irqCount(index: number): Promise<number> {
    return (await this.client.irqInfo(index)).count;
  }
  async setIrqs(index: number, start: number, fds: (Fd | null)[]): Promise<void> {
    // vfio-user carries eventfds only as SCM_RIGHTS, so assign and de-assign go in separate calls.
    for (let i = 0; i < fds.length; ) {
      const assign = fds[i] !== null;
      let n = 1;
      while (i + n < fds.length && (fds[i + n] !== null) === assign) n++;
      const slice = fds.slice(i, i + n) as Fd[];
      await this.client.setIrqs({
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        start: start + i,
        count: n,
        fds: assign ? slice : [],
      });
      i += n;
    }
  }
  disableIrqs(index: number): Promise<void> {
    return this.client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      index,
      start: 0,
      count: 0,
    });
  }
  reset(): Promise<void> {
    this.#slices.forgetPrepared();
    return this.client.reset();
  }

  /** A prepared fd when there is one (prepareSliceFds), else the device is asked in this tick (in a batch). */
  sliceFds(region: number, ranges: SliceRange[]): Promise<Fd[]> {
    return this.#slices.get(region, ranges);
  }
  prepareSliceFds(region: number, ranges: SliceRange[], cap: number): boolean {
    return this.connected && this.#slices.prepare(region, ranges, cap);
  }
  hasPreparedSliceFds(region: number, ranges: SliceRange[]): boolean {
    return this.#slices.hasPrepared(region, ranges);
  }
  forgetPreparedSliceFds(region?: number, ranges?: SliceRange[]): void {
    this.#slices.forgetPrepared(region, ranges);
  }
  get preparedSliceFdCount(): number {
    return this.#slices.preparedCount;
  }

  get preparedSliceFdsHeld(): number {
    return this.#slices.preparedHeld;
  }

  /**
   * Asked of the device once per region and kept (IoFdCache). Each call returns dups the caller owns; with
   * `within`, only that range's sub-regions and their fds.
   */
  regionIoFds(index: number, within?: { offset: bigint; size: bigint }): Promise<RegionIoFds> {
    return this.#ioFds.get(index, within);
  }

  /** The connection changes or goes: its io fds and prepared slice fds were that device's. */
  #dropConnectionState(): void {
    this.#ioFds.drop();
    this.#slices.forgetPrepared();
  }

  revokeSlice(fd: Fd, opts: RevokeOptions = {}): Promise<void> {
    return this.#slices.revoke(fd, opts);
  }

  /** Close for good (idempotent): a reconnect in progress fails, and nothing it opened stays open. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#slices.forgetPrepared();
    this.#joining?.close();
    this.#client.close();
  }
}

const closedError = (endpoint: string) => closedHandleError(`the device at ${endpoint}`);

/**
 * The broker's device connection closes an unmapped map's fd once the unmap's caller has gone on, unless told
 * otherwise: a reclaim's window unmap is the last close of a killed client's DMA memory (issue 16).
 */
function brokerClientOptions(opts: VfioUserClientOptions): VfioUserClientOptions {
  return { closeUnmappedSoon: true, ...opts };
}

/**
 * `fn` as one batch of device commands on a device that can join them (VfioUserDevice.batch), else just `fn`:
 * for the callers that already issue several commands before awaiting any.
 */
export function batchCommands<T>(d: Device, fn: () => T): T {
  const batching = d as Device & { batch?<R>(f: () => R): R };
  return typeof batching.batch === 'function' ? batching.batch(fn) : fn();
}

/** A DMA map's VFIO_USER_F_DMA_REGION_* flags. */
function dmaFlags(m: { read: boolean; write: boolean }): number {
  return (m.read ? VFIO_USER_F_DMA_REGION_READ : 0) | (m.write ? VFIO_USER_F_DMA_REGION_WRITE : 0);
}
