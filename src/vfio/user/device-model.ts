// The interface a vfio-user server hands validated requests to. The SA-1
// simulator implements it for its owner; the broker implements it once per
// client session as that client's restricted lease device.
//
// The server (server.ts) has already checked sizes, argsz, fd counts,
// alignment and bounds against what the model reported (region sizes,
// irq counts) before calling in. A model refuses with `VfioError(errno,
// reason)` (src/errors.ts); the server turns that into an error reply carrying
// the errno and, as a field, the reason.
// fds passed in are owned by the model from the moment it is called (close
// the ones you do not keep); fds returned are sent and then closed by the
// server.

import type { Fd } from '../../sys/fd.js';
import type { PeerCred } from '../../sys/native.js';
import type { PeerDma } from './peer-dma.js';
import type { RegionIoFds } from './region-io-fds.js';

// VfioError, ERRNO (os.constants.errno) and ErrnoName are defined in src/errors.ts, the one error model;
// re-exported here, where the device model's refusals have always been imported from.

export interface RegionDescription {
  index: number;
  /** VFIO_REGION_INFO_FLAG_* (READ/WRITE/MMAP/CAPS). CAPS is set by the server when `caps` is non-empty. */
  flags: number;
  size: bigint;
  /** Offset to pass to mmap(2) with `fd` (vfio-user: the file offset). */
  offset: bigint;
  /** Encoded capability chain (sparse mmap, type...), offsets relative to the cap start; empty for none. */
  caps?: Uint8Array;
  /**
   * A mappable fd for the whole region, if offered. Like every fd a model returns, the
   * server owns it from then on: it sends it with the reply and closes it (or just closes
   * it when regionInfo() was called to validate an access). Hand out a new one per call.
   */
  fd?: Fd;
}

export interface IrqDescription {
  index: number;
  flags: number; // VFIO_IRQ_INFO_*
  count: number;
}

export interface DmaMapRequest {
  /** The memory's fd (owned by the model once called). Absent when the client maps without an fd. */
  fd: Fd | null;
  offset: bigint;
  iova: bigint;
  size: bigint;
  /** VFIO_USER_F_DMA_REGION_READ / _WRITE bits. */
  flags: number;
  /** See {@link Issued}. */
  issued?: Issued;
}

/**
 * Given with a request the connection may pipeline (PIPELINED in request-order.ts; GET_REGION_INFO, served
 * synchronously, needs none): a model calls it once the request has sent the last of its calls to whatever serves it in order (a device connection), so
 * the connection may start the next such request before this one's reply; replies still go back in order.
 * A model that never calls it is served one request at a time, as before.
 */
export type Issued = () => void;

export interface DmaUnmapRequest {
  iova: bigint;
  size: bigint;
  flags: number;
}

export interface IrqSetRequest {
  flags: number; // VFIO_IRQ_SET_*
  index: number;
  start: number;
  count: number;
  /** DATA_EVENTFD: exactly `count` fds (owned by the model); null entries mean "unassign" (fd -1). */
  fds: (Fd | null)[];
  /** DATA_BOOL: `count` bytes. */
  bools?: Uint8Array;
  /** See {@link Issued}. */
  issued?: Issued;
}

export interface FeatureRequest {
  /** VFIO_DEVICE_FEATURE_GET/SET/PROBE bits | feature number. */
  flags: number;
  feature: number;
  data: Uint8Array;
  fds: Fd[];
}

export interface FeatureReply {
  data?: Uint8Array;
  fds?: Fd[];
}

/** What the server knows about the peer of one connection. */
export interface ConnectionInfo {
  id: number;
  cred: PeerCred;
}

export interface VfioUserDeviceModel {
  /** `request`: called for the client's DEVICE_GET_INFO (otherwise: to validate another request). */
  deviceInfo(opts?: { request?: boolean }): { flags: number; num_regions: number; num_irqs: number };
  /**
   * The region's description. `opts.fd === false` when the server only needs flags and size (bounds checks):
   * a model that hands out a fresh fd per call should then make none. `opts.argsz`: the client's GET_REGION_INFO
   * argsz; a reply it cannot hold whole (32 bytes and the capability chain) goes as the head alone, without the
   * fd (the client asks again), so a model that hands something out only once should wait for that request.
   */
  regionInfo(index: number, opts?: { fd?: boolean; argsz?: number }): RegionDescription;
  regionRead(index: number, offset: bigint, count: number): Uint8Array | Promise<Uint8Array>;
  regionWrite(index: number, offset: bigint, data: Uint8Array): void | Promise<void>;
  dmaMap(req: DmaMapRequest): void | Promise<void>;
  /** Must not resolve until the device holds no reference to the memory. */
  dmaUnmap(req: DmaUnmapRequest): void | Promise<void>;
  irqInfo(index: number): IrqDescription;
  setIrqs(req: IrqSetRequest): void | Promise<void>;
  reset(): void | Promise<void>;
  feature(req: FeatureRequest): FeatureReply | Promise<FeatureReply>;
  /**
   * VFIO_USER_DEVICE_GET_REGION_IO_FDS for a region (index already checked against num_regions): its
   * ioeventfd sub-regions and their fds (sent, then closed by the server; hand out new descriptions or dups).
   * Absent: the command is refused with ENOTSUP. `maxFds` is the client's max_msg_fds: a reply needing more
   * fds is refused with ENOSPC, so a device that can share one fd among sub-regions may do so to fit it.
   */
  regionIoFds?(
    index: number,
    opts?: { issued?: Issued; maxFds?: number },
  ): RegionIoFds | Promise<RegionIoFds>;
  /** The connection is gone (hang-up, close, or malformed input): drop its DMA mappings and IRQ fds. */
  disconnected(reason: string): void | Promise<void>;
  /**
   * Called with the client's VERSION capabilities (vendor keys included) before the reply is sent.
   * Returns extra capabilities for the reply; a VfioError refuses the VERSION with that errno and reason.
   */
  negotiate?(
    clientCapabilities: Record<string, unknown>,
  ): Promise<Record<string, unknown>> | Record<string, unknown>;
  /** Extra capabilities merged into the server's version JSON (devlease extensions). */
  versionCapabilities?(): Record<string, unknown>;
  /**
   * Awaited once the VERSION reply is sent, before any later request of the connection is served: a model
   * may answer VERSION early and finish its work here (a lease's grant). A rejection is the answer to the
   * next request (its errno and reason), and the connection is closed after it.
   */
  versionSettled?(): Promise<void>;
  /**
   * Called once, when VERSION has succeeded and before any later request is served: the client's memory through
   * DMA_READ/DMA_WRITE (peer-dma.ts; bound to this connection, failing EPIPE once it closes). A throw refuses the
   * VERSION as negotiate()'s does.
   */
  peerDma?(dma: PeerDma): void;
}
