// The one VFIO device model the broker drives, whatever carries it: the
// kernel's ioctls (iommufd + vfio cdev, or group + type1 container) or a
// vfio-user connection (the SA-1 simulator or any vfio-user server).
//
// The broker and its drivers see only this interface. It is deliberately the
// VFIO vocabulary (regions, irqs, DMA map/unmap, reset, device features) so a
// driver works unchanged on either transport.

import type { EventEmitter } from 'node:events';
import type { Fd } from '../sys/fd.js';
import type { DmaMemory } from '../vfio/user/dma-maps.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';

export type Transport = 'vfio-user' | 'kernel-iommufd' | 'kernel-container';

export interface SparseArea {
  offset: bigint;
  size: bigint;
}

export interface DeviceRegion {
  index: number;
  flags: number; // VFIO_REGION_INFO_FLAG_*
  size: bigint;
  /** mmap offset for this region on the device fd (kernel) or on `fd` (vfio-user). */
  offset: bigint;
  /** Areas that may be mmap'd; undefined: the whole region when FLAG_MMAP is set. */
  sparse?: SparseArea[];
  /** Region type capability, when present. */
  type?: { type: number; subtype: number };
}

export interface DmaMapping {
  /** The memory: a memfd or any mappable fd. The device takes its own reference; the caller keeps `fd`. */
  fd: Fd;
  offset: bigint;
  iova: bigint;
  size: bigint;
  read: boolean;
  write: boolean;
}

export interface IovaRange {
  start: bigint;
  /** Inclusive last address. */
  last: bigint;
}

/**
 * Events: 'close' (reason: Error | null; the transport is gone: device connection lost, or closed by us: null);
 * 'release-requested' (reason: string; the host wants the device back, a kernel device's VFIO REQ: its owner
 * must close it, or an unbind waits for the process to exit); 'error-reported' (reason: string; a kernel
 * device's VFIO ERR: the kernel's AER driver reported an uncorrectable error of the device, whose state can no
 * longer be trusted).
 */
export interface RevokeOptions {
  /**
   * Default true: every remaining mapping of the slice faults (a guarded one reads as revoked). False: the
   * device only lets go of the slice's memory, and mappings others hold keep working on it, disconnected
   * (a client with no revocation notice, such as QEMU, must not die of SIGBUS).
   */
  fault?: boolean;
}

export interface Device extends EventEmitter {
  readonly transport: Transport;
  /** Which path was chosen and why (shown by `devlease status`). */
  readonly path: { chosen: string; reason: string };
  /** PCI vendor/device/subsystem ids and class, read from config space. */
  readonly ids: {
    vendor: number;
    device: number;
    subsystemVendor: number;
    subsystem: number;
    classCode: number;
  };
  readonly numRegions: number;
  readonly numIrqs: number;
  /** false: the device reports no reset method (VFIO_DEVICE_FLAGS_RESET clear), so reset() fails. Absent: it does. */
  readonly resettable?: boolean;

  region(index: number): Promise<DeviceRegion>;
  read(index: number, offset: bigint | number, count: number): Promise<Uint8Array>;
  write(index: number, offset: bigint | number, data: Uint8Array): Promise<void>;
  read32(index: number, offset: number): Promise<number>;
  write32(index: number, offset: number, value: number): Promise<void>;
  read64(index: number, offset: number): Promise<bigint>;
  write64(index: number, offset: number, value: bigint): Promise<void>;

  /** IOVA ranges the IOMMU accepts. */
  iovaRanges(): IovaRange[];
  dmaMap(m: DmaMapping): Promise<void>;
  /**
   * vfio-user devices only (absent on the kernel's, which map only memory this process can pin): map
   * [iova, +size) without an fd; the device reaches it by DMA_READ/DMA_WRITE, served from what
   * `relayedMemory(iova)` gives at each access (the broker's DmaRelay, lease-dma-relay.ts).
   */
  dmaMapWithoutFd?(m: Omit<DmaMapping, 'fd' | 'offset'>): Promise<void>;
  /** Where the maps without an fd are served from, by their IOVA: set once by the broker's lease table. */
  relayedMemory?: ((iova: bigint) => DmaMemory) | null;
  /** Resolves only when the device holds no reference to the memory any more. */
  dmaUnmap(iova: bigint, size: bigint): Promise<void>;

  irqCount(index: number): Promise<number>;
  /** Assign eventfds to vectors [start, start + fds.length) of `index`; null unassigns that vector. */
  setIrqs(index: number, start: number, fds: (Fd | null)[]): Promise<void>;
  /** Disable all vectors of `index`. */
  disableIrqs(index: number): Promise<void>;
  /**
   * Optional: whether the device masks irq `index` itself at each interrupt and unmasks it only when told
   * (VFIO_IRQ_INFO_AUTOMASKED: vfio-pci's INTx); absent: never (a vfio-user server's line is its own).
   */
  irqAutomasked?(index: number): Promise<boolean>;
  /** Optional: unmask vector `start` of irq `index` (VFIO_IRQ_SET_ACTION_UNMASK, DATA_NONE). */
  unmaskIrq?(index: number, start: number): Promise<void>;
  reset(): Promise<void>;

  /**
   * Slice fds for BAR ranges (VFIO_DEVICE_FEATURE_DMA_BUF): one fd per range
   * unit the device defines, each mapping that slice alone. Rejects with code
   * 'ENOTSUP' when the device cannot give mappable slice fds.
   */
  sliceFds(region: number, ranges: { offset: bigint; length: bigint }[]): Promise<Fd[]>;
  /**
   * Optional: ask the device now for the slice fds that a later sliceFds() of exactly these `ranges` of
   * `region` returns without a device round trip (a reclaim readies the next grant's slice once the old one is
   * revoked: the request must reach the device after that revoke). Not asked (false) when that would hold more
   * than `cap` prepared fds, or one of the ranges is prepared already. Nothing to await: a failure only means
   * that sliceFds() asks the device itself. What is prepared is kept until that call, a revoke of the same
   * slice (a failed one too), a new connection, a reset, a handover, forgetPreparedSliceFds() or close().
   */
  prepareSliceFds?(region: number, ranges: { offset: bigint; length: bigint }[], cap: number): boolean;
  /** Optional: whether every one of `ranges` of `region` is prepared (see prepareSliceFds). */
  hasPreparedSliceFds?(region: number, ranges: { offset: bigint; length: bigint }[]): boolean;
  /**
   * Optional: close the prepared slice fds over `ranges` of `region`, or with no arguments all of them (the
   * device's slices may have changed, e.g. a whole-device reset).
   */
  forgetPreparedSliceFds?(region?: number, ranges?: { offset: bigint; length: bigint }[]): void;
  /** Optional: how many prepared slice fds the device holds or has asked for (the cap's count; tests). */
  readonly preparedSliceFdCount?: number;
  /** Optional: how many of them this process holds now, answered (status: what a count of its fds includes). */
  readonly preparedSliceFdsHeld?: number;
  /**
   * Permanently revoke a slice: every mapping of any description of it stops reaching the device. With
   * `fault` (the default) those mappings fault; without, they keep working on memory the device has let go of.
   * 'ENOTSUP' if unsupported.
   */
  revokeSlice(fd: Fd, opts?: RevokeOptions): Promise<void>;
  /**
   * The region's ioeventfd sub-regions (VFIO_USER_DEVICE_GET_REGION_IO_FDS; SA-1 rev 2: one per queue
   * page, the doorbell kick). The fds are the caller's. Rejects with code 'ENOTSUP' when the device offers none.
   * With `within`, only the sub-regions inside that range of the region come, with their fds alone (a lease
   * needs its own queue page's, not a dup of all 253).
   */
  regionIoFds(index: number, within?: { offset: bigint; size: bigint }): Promise<RegionIoFds>;
  /**
   * Each device request's deadline in ms, where a request has one (vfio-user: the connection's timeoutMs);
   * absent where a request is a synchronous ioctl (kernel VFIO). The broker's recovery estimate counts it.
   */
  readonly requestTimeoutMs?: number;
  /** What this transport can enforce, for isolation reporting. */
  readonly capabilities: { mappableSlices: boolean; revocableSlices: boolean };
  /**
   * The device fd itself can be handed to a client to map its slice from (`directFd()`), which the broker then
   * audits (kernel VFIO: audited slices, docs/AUDITED-SLICES.md). Not enforcement, so not a capability.
   */
  readonly directSlices?: boolean;
  /** With directSlices: a new fd of the device for one hand-off (the caller owns it). */
  directFd?(): Fd;

  close(): Promise<void>;
}

/**
 * A device whose transport can come back: a vfio-user server that restarts is normal, and the broker
 * reconnects to it. A kernel device has no such thing (its fd does not drop out from under us).
 */
export interface Reconnectable {
  /** Where the device is reached (a socket path), for messages. */
  readonly endpoint: string;
  /** The current connection is up (false from its loss until a reconnect succeeds). */
  readonly connected: boolean;
  /**
   * Drop the current connection, if any, and connect again. Rejects (and keeps nothing open) when the
   * endpoint refuses, or when what answers is not the device first opened (other PCI ids).
   */
  reconnect(): Promise<void>;
  /**
   * Give up on the current connection: the device stopped answering on it (a frozen server). It is closed
   * and 'close' is emitted with `reason`, as for a connection the server dropped; reconnect() comes next.
   */
  abandon(reason: Error): void;
}

export function isReconnectable(d: Device): d is Device & Reconnectable {
  return typeof (d as Partial<Reconnectable>).reconnect === 'function';
}
