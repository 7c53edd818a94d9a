// What the broker needs to know about one kind of device: how to boot it,
// what lease kinds it offers, how a lease's resources are laid out, and how
// to quiesce and reset a lease. Drivers hold device knowledge; the broker
// holds lifetimes, policy and sessions.

import type { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import type { Fd } from '../sys/fd.js';

/** What a client asks to lease (the broker's policy sees the same request). */
export interface LeaseRequest {
  kind: string;
  /** Device-memory granules wanted (SA-1). */
  devmemGranules?: number;
  [key: string]: unknown;
}

/**
 * The part of the broker's configuration drivers read (the broker's BrokerConfig is one, structurally:
 * drivers do not import the broker). Field meanings are the config file's (docs/CONFIG.md).
 */
export interface DriverConfig {
  layout: { pageSize: number; allowCooperative: boolean };
  /** preparedSliceFds: the cap on slice fds prepared at reclaim (absent: none are prepared). */
  lifetime: { revoke: boolean; quiesceTimeoutMs: number; preparedSliceFds?: number };
  sa1: {
    /** Firmware image path; null: the broker generates a valid default image. */
    firmware: string | null;
    /** IOVA window per lease, bytes (a power of two): the device range, and the size of a translated view. */
    windowSize: bigint;
    /** 'translated': each lease's client sees its own IOVA space [0, windowSize) (Q_XLAT); 'identity': the device's. */
    iovaView: IovaViewMode;
    /** Device-memory granules a lease may ask for at most. */
    maxDevmemGranules: number;
    /** Heartbeat check period (ms); a stopped heartbeat over this long is a hang. */
    heartbeatMs: number;
    /**
     * A device that has not answered a HEARTBEAT read for this long (ms) is unresponsive (a frozen server):
     * the broker treats it as hung, drops its connection and reconnects until it answers.
     */
    responseTimeoutMs: number;
  };
  /**
   * The generic driver: whether a device that reports no reset method (VFIO_DEVICE_FLAGS_RESET clear) is leased
   * again after a lease, as that lease left it (true), or quarantined then (false, the default; absent: false).
   */
  generic?: { reuseWithoutReset: boolean };
}

/**
 * How a lease's client addresses its DMA memory. 'identity': the client uses the device's own IOVAs (its
 * window). 'translated': the client sees its own IOVA space [view.base, +view.size), and its address V is
 * the device's window.base + (V - view.base) (SA-1: the queue's Q_XLAT), so a virtual machine can map guest
 * RAM at guest-physical addresses.
 */
export type IovaViewMode = 'translated' | 'identity';

export interface IovaView {
  mode: IovaViewMode;
  /** The client's IOVA range (for 'identity', the window itself). */
  base: bigint;
  size: bigint;
  /** Why this mode (reported to the client: a driver that cannot translate says so). */
  reason: string;
}

/**
 * 'enforced': the kernel or the device keeps clients apart (a revocable slice fd, the IOMMU). 'audited': the
 * client maps its slice directly from the device fd it was handed once; the broker checks from /proc that it
 * kept and passed no fd and maps only its slice (src/broker/audit-scan), and kills mappers at a revoke's
 * deadline, but nothing prevents misuse between checks. 'cooperative': reached through the broker, or shared.
 */
export type IsolationLevel = 'enforced' | 'audited' | 'cooperative';
export interface Isolation {
  level: IsolationLevel;
  reason: string;
}

/** One leased piece of a BAR, presented to the client as region `leaseRegion`. */
export interface SliceSpec {
  /** Physical region index and byte range. */
  region: number;
  offset: bigint;
  size: bigint;
  /** Region index in the lease's virtual device. */
  leaseRegion: number;
  /** Offset of this slice inside the lease region. */
  leaseOffset: bigint;
  /** The unit slice fds come in (a queue page, a granule): the device gives one fd per unit. */
  unit: bigint;
  /** false: no slice fds; the client reaches the slice through the broker (REGION_READ/WRITE). Default true. */
  mappable?: boolean;
  isolation: Isolation;
}

export interface LeaseResources {
  kind: string;
  /** Device-specific handle, e.g. the queue number. */
  queue: number | null;
  slices: SliceSpec[];
  /** The device IOVA range the lease's DMA may use (where the broker maps the client's memory). */
  window: { base: bigint; size: bigint } | null;
  /** The IOVA space the client sees (null when there is no window). */
  view: IovaView | null;
  /** Physical vectors, lease vector i = physical vectors[i], at VFIO irq index `irqIndex`. */
  vectors: number[];
  /** VFIO irq index of `vectors` on the physical device: MSI-X unless said (edu has MSI only). */
  irqIndex?: number;
  /** Device memory (BAR4 range), if any. */
  devmem: { offset: bigint; size: bigint } | null;
  /** Isolation per resource, with the reason, reported to the client. */
  isolation: Record<string, Isolation>;
}

export interface DeviceFault {
  /** The queue it concerns, or null for the whole device. */
  queue: number | null;
  code: number;
  name: string;
  address: bigint;
}

/**
 * Events a driver emits:
 * - 'fault' (DeviceFault): a fault record; the broker forwards it to the lease holding the queue.
 * - 'faults-lost' (count: number): records the device's log overwrote before the driver read them; the broker
 *   audits `device-faults-lost`.
 * - 'hang' (reason: string): the device stopped; the broker notifies everyone, resets and reboots.
 * - 'device-reset' (reason: string): the device was reset behind the driver's back; leases are gone.
 * - 'unresponsive' (reason: string): the device stopped answering (a frozen server): a hang that no device
 *   command can reach; the broker ends every lease without it and reconnects.
 *
 * Every wait on the device is bounded (drivers/poll.ts): a wait that runs out rejects with a VfioError whose
 * `code` is ETIMEDOUT, naming what was awaited and the last value read; no method carries on as if the device
 * had finished. Errors of the device connection itself (ECONNRESET, ...) propagate unchanged. A method that
 * rejects may have done part of its work: the guarantees below say what then holds.
 */
export interface Driver extends EventEmitter {
  readonly name: string;
  /**
   * Bring the device to a running state from whatever state it is in (a previous broker's leftovers
   * included). Bounded: device reset, firmware load and queue resets each have a deadline. Rejects when the
   * device is not the expected one, cannot run, or a wait ran out; the broker does not start then. A queue
   * whose reset does not finish is left out of the pool rather than failing the boot.
   */
  boot(): Promise<void>;
  /** Lease kinds this device offers (one socket each). Synchronous, never fails after boot(). */
  kinds(): string[];
  /**
   * How many leases of `kind` the device holds at once when none is quarantined (SA-1: its queues); policy's
   * 'fair' limit is a share of it. Absent: one (a device leased whole).
   */
  capacity?(kind: string): number;
  /** Check the layout against the page size: throws naming region, offset and stride when slices cannot be isolated. */
  validateLayout(): void;
  /**
   * Reserve resources for a lease. Synchronous, touches no register. Throws VfioError: ENOSPC when none are
   * free (quarantined resources count as not free), EINVAL for a bad request. On a throw nothing is reserved.
   */
  acquire(req: LeaseRequest): LeaseResources;
  /**
   * Program the device for the lease (a clean reset queue, windows, vector) and enable it. Bounded by
   * lifetime.quiesce_timeout_ms per wait. On a rejection the broker calls release(); a resource whose reset
   * timed out is quarantined by the driver and not returned to the pool by that release().
   */
  activate(res: LeaseResources): Promise<void>;
  /**
   * Stop the lease's work: disable, wait for idle (in-flight work completes ABORTED), reset. Each wait is
   * bounded by lifetime.quiesce_timeout_ms. Resolves only when the device confirmed both; rejects with
   * ETIMEDOUT when it did not, and the broker then quarantines the lease (its resources are never reused).
   */
  quiesce(res: LeaseResources): Promise<void>;
  /**
   * The client asked for DEVICE_RESET: reset only what it leased, then enable it again. Bounded as quiesce();
   * an ETIMEDOUT reaches the client, and the resource stays quarantined by the driver.
   */
  resetLease(res: LeaseResources): Promise<void>;
  /**
   * Whole-device reset and back to running (firmware, enable); every lease must be reclaimed first. Bounded
   * (device reset, firmware load). Rejects when the device does not come back; the broker then keeps grants
   * suspended with the reason (the device is quarantined as a whole).
   */
  recover(): Promise<void>;
  /**
   * The sum of the deadlines of recover()'s own waits (device reset, firmware load, ...), in ms; absent: it
   * has none beyond its device requests. The broker's bound on a recovery counts it once per attempt
   * (`devlease reset` waits that long; recovery.ts).
   */
  readonly recoverWaitsMs?: number;
  /**
   * Clear what a client left in its slices before they are leased again (only needed where slices were not
   * revoked: a revoked slice gets fresh backing). SA-1: queue reset, device memory zeroed. Bounded; a rejection
   * means the slices may still hold the last client's data, and the broker quarantines the lease.
   */
  scrub(res: LeaseResources): Promise<void>;
  /**
   * Optional: called once the broker has quiesced a lease and revoked all its slices (the last holder can no
   * longer reach the resources), before release(): ready them for the next grant so the next activate() has
   * less to do. SA-1: the revoke reset the queue, so the queue is marked clean and the grant skips its reset.
   * Bounded as quiesce(); on a rejection activate() does the work itself.
   */
  prepare?(res: LeaseResources): Promise<void>;
  /**
   * Optional: called while the broker sends a reclaim's last device commands (its unmaps), once the lease's
   * queue is quiesced and every revoke of its slices has succeeded: ask the device now for what the next grant
   * of these resources needs, without waiting for the answer (SA-1: the queue page's fresh slice fd,
   * Device.prepareSliceFds, bounded by lifetime.prepared_slice_fds). prepare() follows when the reclaim ends
   * well; the broker drops what was asked otherwise.
   */
  prepareAhead?(res: LeaseResources): void;
  /**
   * Return the resources to the pool (after the broker has revoked or seen released every slice). Synchronous;
   * resources the driver has quarantined (a reset that did not finish) stay out of the pool.
   */
  release(res: LeaseResources): void;
  /** The virtual config space (256 bytes) of a lease device. Synchronous. */
  leaseConfigSpace(res: LeaseResources): Uint8Array;
  /** Device-level state for `devlease status` (a few register reads; rejects only if the device is gone). */
  status(): Promise<Record<string, unknown>>;
  /**
   * The device connection is gone (a vfio-user server died), and with it everything the device held: stop the
   * timers and watchers that use it and forget the resource pools. boot() follows when the device is back,
   * and must start from scratch (a second boot() without this in between is a broker restart's retake).
   * Leases of the lost device are not release()d: their resources died with it.
   */
  deviceLost(): void;
  /** Stop timers and watchers (the device stays as it is). Synchronous, idempotent. */
  close(): void;
  /**
   * Broker upgrade (src/broker/handover; a driver without these cannot be upgraded live): hold() stops every
   * timer and watcher that would touch the device and waits for the work they started; unhold() undoes it (a
   * rollback). handover() describes the driver's state as an opaque JSON blob plus the fds it holds (in
   * order); the new broker's driver adopt()s them instead of boot(), given the resources of the leases taken
   * over, and checks the device still agrees (rejecting if not). `parked`: the resources of leases taken over
   * whose reclaim has not finished (awaiting the release of their slices, quarantined): kept out of the pool,
   * not checked (their work is stopped); the new broker finishes their reclaim (release() then) or keeps them.
   */
  hold?(): Promise<void>;
  unhold?(): void;
  handover?(): { state: unknown; fds: Fd[] };
  adopt?(state: unknown, fds: Fd[], leased: LeaseResources[], parked?: LeaseResources[]): Promise<void>;
}

/**
 * The driver's status(), or, when reading the device failed (a device that does not answer: ETIMEDOUT), what
 * failed in its place: `devlease status` is asked just when the device is in trouble, and the rest of its
 * answer (recovery, leases, sockets) must not be lost with the device's part.
 */
export async function statusOrFailure(driver: Driver): Promise<Record<string, unknown>> {
  try {
    return await driver.status();
  } catch (err) {
    const { code, message } = err as { code?: string; message?: string };
    return { driver: driver.name, error: `reading the device's state failed: ${message}`, code };
  }
}

/** An identity view of `window`, for drivers whose device cannot translate addresses. */
export function identityView(window: { base: bigint; size: bigint } | null, reason: string): IovaView | null {
  return window ? { mode: 'identity', base: window.base, size: window.size, reason } : null;
}

export interface DriverFactory {
  readonly name: string;
  matches(device: Device): boolean;
  create(device: Device, config: DriverConfig): Driver;
}
