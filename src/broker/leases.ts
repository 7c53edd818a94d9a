// The lease table: grants (after policy), revocation with notice and a
// deadline, and reclaim in the one safe order — quiesce the work, unmap the
// memory, revoke (or wait for the release of) the slices — before anything
// goes back to the pool.

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import type { DeviceFault, Driver } from '../drivers/driver.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../vfio/uapi/vfio.js';
import { VfioError } from '../vfio/user/device-model.js';
import type { AuditLog } from './audit.js';
import type { BrokerConfig } from './config.js';
import { Lease } from './lease.js';
import type { CallerContext, LeaseRequest, Policy, Usage } from './policy.js';
import { SliceUnit, type SliceWatcher } from './slices.js';

/** Events: 'granted' (Lease), 'released' (Lease), 'state' (Lease). */
export class LeaseTable extends EventEmitter {
  readonly #leases = new Map<string, Lease>();
  #next = 1;
  #draining = false;
  /** Grants in progress per uid: counted against the lease limit so concurrent requests cannot overshoot it. */
  readonly #granting = new Map<number, number>();

  constructor(
    readonly device: Device,
    readonly driver: Driver,
    readonly policy: Policy,
    readonly audit: AuditLog,
    readonly config: BrokerConfig,
    readonly watcher: SliceWatcher,
  ) {
    super();
  }

  get draining(): boolean {
    return this.#draining;
  }
  set draining(on: boolean) {
    this.#draining = on;
    this.audit.write({ event: on ? 'drain' : 'undrain' });
  }

  all(): Lease[] {
    return [...this.#leases.values()];
  }

  get(id: string): Lease | undefined {
    return this.#leases.get(id);
  }

  usage(ctx: CallerContext): Usage {
    const u: Usage = { leases: this.#granting.get(ctx.uid) ?? 0, mappedBytes: 0n, mappings: 0 };
    for (const l of this.#leases.values()) {
      if (l.ctx.uid !== ctx.uid || !l.live) continue;
      u.leases++;
      u.mappedBytes += l.mappedBytes;
      u.mappings += l.mappings.size;
    }
    return u;
  }

  /** Policy check, resources, device programming, slice fds. Throws VfioError with the reason on refusal. */
  async grant(ctx: CallerContext, req: LeaseRequest): Promise<Lease> {
    this.#granting.set(ctx.uid, (this.#granting.get(ctx.uid) ?? 0) + 1);
    try {
      return await this.#grant(ctx, req);
    } finally {
      const n = (this.#granting.get(ctx.uid) ?? 1) - 1;
      if (n > 0) this.#granting.set(ctx.uid, n);
      else this.#granting.delete(ctx.uid);
    }
  }

  async #grant(ctx: CallerContext, req: LeaseRequest): Promise<Lease> {
    const who = { pid: ctx.pid, uid: ctx.uid, gid: ctx.gid, exe: ctx.exe, kind: req.kind };
    if (this.#draining) {
      this.audit.write({ event: 'deny', ...who, reason: 'the broker is draining: no new leases' });
      throw new VfioError('EBUSY', 'the broker is draining: no new leases');
    }
    // This request is itself counted in `granting`: compare the others against the limit.
    const usage = this.usage(ctx);
    usage.leases -= 1;
    const verdict = await this.policy.checkLease(ctx, req, usage);
    if (!verdict.allow) {
      this.audit.write({ event: 'deny', ...who, reason: verdict.reason });
      throw new VfioError('EACCES', verdict.reason);
    }
    let resources: ReturnType<Driver['acquire']>;
    try {
      resources = this.driver.acquire(req);
    } catch (err) {
      this.audit.write({ event: 'deny', ...who, reason: (err as Error).message });
      throw err;
    }
    const lease = new Lease(`${req.kind}-${this.#next++}`, req, ctx, resources);
    try {
      for (const s of resources.slices) {
        const units = s.mappable === false ? [] : await this.#sliceUnits(s.region, s.offset, s.size, s.unit);
        lease.slices.set(s.leaseRegion, units);
      }
      await this.driver.activate(resources);
    } catch (err) {
      for (const units of lease.slices.values()) for (const u of units) u.dispose(this.watcher);
      this.driver.release(resources);
      this.audit.write({
        event: 'deny',
        ...who,
        reason: `device refused the lease: ${(err as Error).message}`,
      });
      throw err instanceof VfioError
        ? err
        : new VfioError('EIO', `device refused the lease: ${(err as Error).message}`);
    }
    this.#leases.set(lease.id, lease);
    this.audit.write({
      event: 'grant',
      lease: lease.id,
      ...who,
      queue: resources.queue,
      window: resources.window,
    });
    this.emit('granted', lease);
    return lease;
  }

  async #sliceUnits(region: number, offset: bigint, size: bigint, unit: bigint): Promise<SliceUnit[]> {
    const ranges = [];
    for (let o = 0n; o < size; o += unit) ranges.push({ offset: offset + o, length: unit });
    if (!this.device.capabilities.mappableSlices) return []; // mediated: REGION_READ/WRITE through the broker only
    const fds = await this.device.sliceFds(region, ranges);
    return fds.map((fd) => new SliceUnit(fd));
  }

  /** Owner-initiated revoke: REQ notice now, forced reclaim at the deadline (or when the client lets go). */
  revoke(
    id: string,
    deadlineMs = this.config.lifetime.defaultDeadlineMs,
    reason = 'revoked by the owner',
  ): Lease {
    const lease = this.#leases.get(id);
    if (!lease) throw new VfioError('ENOENT', `no lease '${id}'`);
    if (lease.state !== 'active') return lease;
    lease.state = 'revoking';
    lease.deadline = Date.now() + deadlineMs;
    lease.endReason = reason;
    this.audit.write({
      event: 'revoke',
      lease: id,
      pid: lease.ctx.pid,
      uid: lease.ctx.uid,
      deadlineMs,
      reason,
    });
    this.emit('state', lease);
    lease.notify('req');
    const timer = setTimeout(
      () => void this.reclaim(lease, `deadline of ${deadlineMs} ms passed: ${reason}`),
      deadlineMs,
    );
    timer.unref();
    return lease;
  }

  /** Forward a device fault to the lease holding that queue (ERR notice), or to everyone for device faults. */
  fault(f: DeviceFault): void {
    for (const l of this.#leases.values()) {
      if (!l.live || (f.queue !== null && l.resources.queue !== f.queue)) continue;
      l.faults.push(f);
      if (l.faults.length > 16) l.faults.shift();
      l.notify('err');
    }
  }

  /**
   * Take everything back. Idempotent: a second call (pidfd and hang-up both firing) returns the same promise.
   * Order: disconnect, quiesce, unwire vectors, unmap every IOVA, then revoke slices or wait for their release.
   */
  reclaim(lease: Lease, reason: string): Promise<void> {
    if (lease.reclaimed) return lease.reclaimed;
    lease.reclaimed = this.#reclaim(lease, reason);
    return lease.reclaimed;
  }

  async #reclaim(lease: Lease, reason: string): Promise<void> {
    const t0 = process.hrtime.bigint();
    lease.state = 'reclaiming';
    lease.endReason = reason;
    this.emit('state', lease);
    this.audit.write({ event: 'reclaim', lease: lease.id, pid: lease.ctx.pid, uid: lease.ctx.uid, reason });
    lease.disconnect?.(reason);
    const problems: string[] = [];
    const step = async (what: string, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
      }
    };
    await step('quiesce', () => this.driver.quiesce(lease.resources));
    const irqIndex = lease.resources.irqIndex ?? VFIO_PCI_MSIX_IRQ_INDEX;
    for (const v of lease.resources.vectors) {
      await step(`unwire vector ${v}`, () => this.device.setIrqs(irqIndex, v, [null]));
    }
    for (const m of [...lease.mappings.values()]) {
      await step(`unmap 0x${m.iova.toString(16)}`, () => this.device.dmaUnmap(m.iova, m.size));
      lease.mappings.delete(m.iova);
    }
    lease.errFd?.close();
    lease.reqFd?.close();
    const units = [...lease.slices.values()].flat();
    const canRevoke = this.config.lifetime.revoke && this.device.capabilities.revocableSlices;
    if (canRevoke) {
      for (const u of units) await step('revoke slice', () => this.device.revokeSlice(u.deviceFd));
    } else if (units.some((u) => u.outstanding > 0)) {
      lease.state = 'awaiting-release';
      this.emit('state', lease);
      this.audit.write({
        event: 'awaiting-release',
        lease: lease.id,
        outstanding: units.map((u) => u.outstanding),
      });
      await Promise.all(units.map((u) => u.whenReleased()));
    }
    for (const u of units) u.dispose(this.watcher);
    this.driver.release(lease.resources);
    lease.state = 'released';
    this.#leases.delete(lease.id);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    this.audit.write({ event: 'released', lease: lease.id, ms, revoked: canRevoke, problems });
    this.emit('state', lease);
    this.emit('released', lease);
  }

  /** Reclaim everything (device hang, broker shutdown). */
  async reclaimAll(reason: string): Promise<void> {
    await Promise.all([...this.#leases.values()].map((l) => this.reclaim(l, reason)));
  }
}
