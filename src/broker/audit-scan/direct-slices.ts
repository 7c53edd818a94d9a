// The audited slice provider: how a lease's mappable slice of a kernel
// device reaches its client. The kernel gives no mmap-able, revocable
// per-slice fd (its dma-buf of a BAR has no mmap as of 7.3), so the client is
// handed the device fd itself, once, with the mmap offset of its slice (the
// VFIO region offset + the slice's offset); the client library maps exactly
// that and closes the fd before connect() returns. The SliceAuditor then
// checks, from /proc, that this is what happened and keeps happening, and
// tells reclaim when nobody maps the slice any more.
//
// Slice providers: 'slice-fds' (vfio-user DMA_BUF: per-slice fds, enforced,
// src/broker/slices.ts) and this 'audited' one. A kernel whose dma-buf of a
// BAR can be mmapped (probe: src/device/kernel/dmabuf-probe.ts) would get a
// third, 'dma-buf', beside this one: per-slice dma-buf fds handed out like
// the vfio-user slice fds, `enforced`. Not built: no kernel here can test it.

import type { Device } from '../../device/device.js';
import type { SliceSpec } from '../../drivers/driver.js';
import { VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { VFIO_PCI_ROM_REGION_INDEX } from '../../vfio/uapi/vfio.js';
import { type AuditorHost, type AuditorState, type DirectAuditConfig, SliceAuditor } from './auditor.js';
import { identityOfFd } from './proc-scan.js';

export interface SliceProvider {
  readonly name: 'slice-fds' | 'audited' | 'dma-buf';
}

export interface DirectHandOff {
  fd: Fd;
  /** Where the client mmaps its slice on `fd`. */
  offset: bigint;
}

/** What an upgrade carries (handover/format.ts): the lease regions handed out, and the audit's entries. */
export interface DirectSlicesState {
  handed: { lease: string; regions: number[] }[];
  auditor: AuditorState;
}

/** The audit's part of `devlease status` (its `directSlices`): its settings and what its scans cost and saw. */
export function auditStatus(auditor: SliceAuditor): Record<string, unknown> {
  const s = auditor.stats;
  return {
    action: auditor.config.action,
    deadlineAction: auditor.config.deadlineAction,
    periodMs: auditor.config.periodMs,
    scans: s.scans,
    lastScanUs: Math.round(s.lastUs),
    meanScanUs: s.scans ? Math.round(s.totalUs / s.scans) : 0,
    processesScanned: s.processes,
    // Of those, the last scan did not fully read these (gone meanwhile; not permitted: the broker without
    // CAP_SYS_PTRACE; or read in part, below). What they map or hold may be unseen: a count that stays up is a
    // blind spot.
    processesUnreadable: s.unreadable,
    // Of the unreadable, those the last scan read but for some threads' own file tables: past the walk's bounds
    // (the next scans read the rest: docs/AUDITED-SLICES.md) or a table no scan reads. The last scan's count,
    // as processesUnreadable (kept after a scan run again, an upgrade's: the count of the pass kept).
    processesReadInPart: s.readInPart,
    violations: s.violations,
    // Scans that failed outright (the broker out of fds or memory), and the last error while none succeeded
    // since: slices waiting for their release stay out of the pool meanwhile.
    scanFailures: s.scanFailures,
    lastScanError: s.lastScanError,
  };
}

export interface DirectLease {
  id: string;
  ctx: { pid: number };
}

export class DirectSlices implements SliceProvider {
  readonly name = 'audited' as const;
  readonly auditor: SliceAuditor;
  /** Lease regions already handed out, per lease: the fd goes out once. */
  readonly #handed = new Map<string, Set<number>>();
  /** The device's mmap offset of each BAR region (read once: REGION_INFO is answered synchronously). */
  readonly #offsets = new Map<number, bigint>();

  /** Reads the BARs' mmap offsets, then audits `device`'s fd. Rejects ENOTSUP on a device without direct slices. */
  static async create(device: Device, config: DirectAuditConfig, host: AuditorHost): Promise<DirectSlices> {
    const d = new DirectSlices(device, config, host);
    for (let i = 0; i < Math.min(device.numRegions, VFIO_PCI_ROM_REGION_INDEX); i++) {
      const r = await device.region(i).catch(() => null);
      if (r && r.size > 0n) d.#offsets.set(i, r.offset);
    }
    return d;
  }

  private constructor(
    readonly device: Device,
    config: DirectAuditConfig,
    host: AuditorHost,
  ) {
    const fd = DirectSlices.#deviceFd(device);
    try {
      this.auditor = new SliceAuditor(identityOfFd(fd.fd), config, host);
    } finally {
      fd.close();
    }
  }

  static #deviceFd(device: Device): Fd {
    if (!device.directSlices || !device.directFd)
      throw new VfioError('ENOTSUP', `a ${device.transport} device hands out no device fd for direct slices`);
    return device.directFd();
  }

  /** Whether any lease has slices handed out directly (an upgrade then carries the audit). */
  get handingOut(): boolean {
    return this.#handed.size > 0;
  }

  /** Whether the lease has slices handed out directly (reclaim then waits for their observed release). */
  has(id: string): boolean {
    return this.#handed.has(id);
  }

  /** Whether `slice` of the lease was handed out already (its next REGION_INFO gets no fd). */
  handedOut(lease: DirectLease, slice: SliceSpec): boolean {
    return this.#handed.get(lease.id)?.has(slice.leaseRegion) === true;
  }

  /**
   * The device fd for `slice`, once per lease region: null when it was handed out already (a second
   * REGION_INFO gets no fd; the region is then reached through the broker). The caller sends and closes it.
   */
  handOut(lease: DirectLease, slice: SliceSpec): DirectHandOff | null {
    const handed = this.#handed.get(lease.id) ?? new Set<number>();
    if (handed.has(slice.leaseRegion)) return null;
    const regionOffset = this.#offsets.get(slice.region);
    if (regionOffset === undefined)
      throw new VfioError('EINVAL', `region ${slice.region} of the device is no BAR that can be handed out`);
    handed.add(slice.leaseRegion);
    this.#handed.set(lease.id, handed);
    const start = regionOffset + slice.offset;
    const fd = DirectSlices.#deviceFd(this.device);
    this.auditor.add(lease.id, lease.ctx.pid, [{ start, end: start + slice.size }]);
    return { fd, offset: start };
  }

  /** A control request of the lease: scan soon, off the request's path (`handOffDone`: see SliceAuditor). */
  onRequest(id: string, handOffDone = false): void {
    this.auditor.onRequest(id, handOffDone);
  }

  /** Resolves when no process maps the lease's slices; `forced`: kill the mappers first (a revoke's deadline). */
  whenReleased(id: string, forced: boolean): Promise<void> {
    return this.auditor.whenUnmapped(id, { forced });
  }

  /** A revoke's deadline passed: kill (or record) every process mapping the lease's slices now. */
  killMappers(id: string): void {
    this.auditor.killMappers(id);
  }

  forget(id: string): void {
    this.#handed.delete(id);
    this.auditor.forget(id);
  }

  handover(): DirectSlicesState {
    return {
      handed: [...this.#handed].map(([lease, regions]) => ({ lease, regions: [...regions] })),
      auditor: this.auditor.handover(),
    };
  }

  /** The previous broker's hand-offs and audit (an upgrade): audited from the commit on (Leases.unhold). */
  adopt(state: DirectSlicesState): void {
    for (const h of state.handed) this.#handed.set(h.lease, new Set(h.regions));
    this.auditor.adopt(state.auditor);
  }

  status(): Record<string, unknown> {
    return { provider: this.name, ...auditStatus(this.auditor) };
  }

  close(): void {
    this.auditor.close();
  }
}
