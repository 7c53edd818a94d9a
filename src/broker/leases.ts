// The lease table: grants (after policy), revocation with notice and a
// deadline, and reclaim in the one safe order — quiesce the work, unmap the
// memory, revoke (or wait for the release of) the slices — before anything
// goes back to the pool.

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import type { DeviceFault, Driver } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../vfio/uapi/vfio.js';
import type { AuditLog } from './audit.js';
import type { DirectSlices } from './audit-scan/direct-slices.js';
import type { BrokerConfig } from './config.js';
import type { Lease } from './lease.js';
import { revokeLease, unmapAll } from './lease-end.js';
import { grantLease } from './lease-grant.js';
import { UsageAccounts } from './lease-usage.js';
import { retryLocalTransient } from './local-retry.js';
import type { CallerContext, LeaseRequest, Policy, Usage } from './policy.js';
import type { SliceWatcher } from './slices.js';

/** Events: 'granted' (Lease), 'released' (Lease), 'state' (Lease). */
export class LeaseTable extends EventEmitter {
  readonly #leases = new Map<string, Lease>();
  /** What each uid's live leases hold (lease-usage.ts): the policy's limits read it on every grant and map. */
  readonly #accounts = new UsageAccounts();
  #next = 1;
  #draining = false;
  /** Grants in progress per uid: counted against the lease limit so concurrent requests cannot overshoot it. */
  readonly #granting = new Map<number, number>();
  /** DMA maps in progress per uid, counted against the map limits for the same reason. */
  readonly #mapping = new Map<number, { bytes: bigint; count: number }>();
  /** Counts device connections lost: a lease granted in an earlier generation lost its device. */
  #generation = 0;
  /** Settles when the current generation's device is lost (wakes reclaims waiting on a client). */
  #lost = deferred();

  constructor(
    readonly device: Device,
    readonly driver: Driver,
    /** Replaced by a reload (reload.ts): every request from then on meets the new one. */
    public policy: Policy,
    readonly audit: AuditLog,
    readonly config: BrokerConfig,
    readonly watcher: SliceWatcher,
  ) {
    super();
  }

  /** The audited slice provider, on a device that hands out its fd for direct slices (set by the broker). */
  direct: DirectSlices | null = null;

  /** Why grants are suspended (recovery, shutdown), or null. Unlike draining, this is not the owner's choice. */
  suspended: string | null = null;
  /** Why there is no device to lease (its connection is lost; the broker is reconnecting), or null. */
  deviceGone: string | null = null;

  /** Where the table's log lines go: the broker's log when it sets one, stderr until then. */
  log: (line: string) => void = (line) => process.stderr.write(`devlease broker: ${line}\n`);
  /** Device refusals of lease requests: one line each, at most 5 per lease and request kind per 10 s. */
  readonly refusals = new RateLimitedLog((line) => this.log(line), { burst: 5, intervalMs: 10_000 });

  /** The device connection's generation (see #generation): a grant checks it did not change under it. */
  get generation(): number {
    return this.#generation;
  }

  /** The next lease's id for `kind` (ids are never reused within a broker, nor across an upgrade). */
  nextId(kind: string): string {
    return `${kind}-${this.#next++}`;
  }

  /** Where the id sequence is (a handover carries it on). */
  get idSequence(): number {
    return this.#next;
  }
  set idSequence(n: number) {
    this.#next = Math.max(this.#next, n);
  }

  /** Enter a lease into the table: a grant that succeeded, or one taken over from another broker. */
  add(lease: Lease): void {
    this.#leases.set(lease.id, lease);
    lease.countIn(this.#accounts);
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

  /** Count a DMA map in progress for `uid`; call the returned function when it is done either way. */
  reserveMap(uid: number, bytes: bigint): () => void {
    const r = this.#mapping.get(uid) ?? { bytes: 0n, count: 0 };
    r.bytes += bytes;
    r.count += 1;
    this.#mapping.set(uid, r);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      r.bytes -= bytes;
      r.count -= 1;
      if (r.count === 0) this.#mapping.delete(uid);
    };
  }

  usage(ctx: CallerContext): Usage {
    const inflight = this.#mapping.get(ctx.uid);
    const u = this.#accounts.of(ctx.uid);
    u.leases += this.#granting.get(ctx.uid) ?? 0;
    u.mappedBytes += inflight?.bytes ?? 0n;
    u.mappings += inflight?.count ?? 0;
    return u;
  }

  /** Policy check, resources, device programming, slice fds. Throws VfioError with the reason on refusal. */
  async grant(ctx: CallerContext, req: LeaseRequest): Promise<Lease> {
    this.#granting.set(ctx.uid, (this.#granting.get(ctx.uid) ?? 0) + 1);
    try {
      return await grantLease(this, ctx, req);
    } finally {
      const n = (this.#granting.get(ctx.uid) ?? 1) - 1;
      if (n > 0) this.#granting.set(ctx.uid, n);
      else this.#granting.delete(ctx.uid);
    }
  }

  /** Refuse while there is nothing to lease: no device (ENODEV), recovery or shutdown (EAGAIN), draining. */
  checkOpen(who: Record<string, unknown>): void {
    const [code, reason]: ['ENODEV' | 'EAGAIN' | 'EBUSY', string] | [null, null] = this.deviceGone
      ? ['ENODEV', this.deviceGone]
      : this.suspended
        ? ['EAGAIN', this.suspended]
        : this.#draining
          ? ['EBUSY', 'the broker is draining: no new leases']
          : [null, null];
    if (code === null) return;
    this.audit.write({ event: 'deny', ...who, reason, code });
    throw new VfioError(code, reason);
  }

  /** Owner-initiated revoke: REQ notice now, forced reclaim at the deadline (or when the client lets go). */
  revoke(
    id: string,
    deadlineMs = this.config.lifetime.defaultDeadlineMs,
    reason = 'revoked by the owner',
  ): Lease {
    return revokeLease(this, id, deadlineMs, reason);
  }

  /**
   * Forward a device fault to the lease holding that queue, or to everyone for device faults. A queue's fault
   * is recoverable (the holder resets its queue): it never signals ERR, which a stock client such as QEMU takes
   * for an unrecoverable error (vm_stop). The holder learns of it from the queue page's Q_ERROR, the
   * completion's status, and — a devlease client — the notice irq. Device-wide faults signal ERR.
   */
  fault(f: DeviceFault): void {
    for (const l of this.#leases.values()) {
      if (!l.live || (f.queue !== null && l.resources.queue !== f.queue)) continue;
      l.faults.push(f);
      if (l.faults.length > 16) l.faults.shift();
      l.notify(f.queue === null ? 'err' : 'notice');
    }
  }

  /**
   * Take everything back. Idempotent: a second call (pidfd and hang-up both firing) returns the same promise.
   * Order: disconnect, quiesce, unwire vectors, unmap every IOVA, then revoke slices or wait for their release.
   */
  reclaim(lease: Lease, reason: string): Promise<void> {
    if (lease.reclaimed) return lease.reclaimed;
    const held = this.#held;
    if (held) {
      // An upgrade holds the table (handover/): the reclaim waits for its outcome. Rolled back, it runs
      // here; handed over, the new broker sees the same hang-up, exit or deadline and reclaims it there.
      this.#deferred.set(lease, reason);
      lease.reclaimed = held.promise.then(() => this.#reclaim(lease, reason));
      return lease.reclaimed;
    }
    lease.reclaimed = this.#reclaim(lease, reason);
    return lease.reclaimed;
  }

  /**
   * Hold every reclaim until unhold() (an upgrade's quiesce), after those in progress have finished or parked
   * awaiting the release of their slices (an upgrade carries those: the new broker finishes them), and stop
   * reading slice events (they stay queued: the watcher's inotify instance goes to the new broker). Rejects
   * EBUSY, holding nothing, while a lease awaits the release of audited slices (not carried by this version).
   */
  async hold(): Promise<void> {
    this.#refuseAwaitingDirect();
    this.#held ??= deferred();
    this.watcher.pause();
    await Promise.all([
      ...this.all().flatMap((l) =>
        l.state === 'reclaiming' && l.reclaimed ? [Promise.race([l.reclaimed, l.whenParked])] : [],
      ),
      // Released before the hold: their reclaim finishes (scrub, release) before anything is described.
      ...[...this.#ending].map((l) => l.reclaimed),
    ]);
    this.#refuseAwaitingDirect();
  }

  #refuseAwaitingDirect(): void {
    const parked = this.all().filter((l) => l.state === 'awaiting-release' && this.direct?.has(l.id));
    if (parked.length) {
      throw new VfioError(
        'EBUSY',
        `lease(s) ${parked.map((l) => l.id).join(', ')} await the release of their audited slices: upgrade once they are released`,
      );
    }
  }

  /**
   * A parked lease whose slices came back: while an upgrade holds the table, the rest of its reclaim waits
   * for the outcome — rolled back, it runs here; handed over, this broker only exits and the new one (which
   * read the release from the same inotify queue) finishes it. Past this point hold() waits for it.
   */
  async #pastRelease(lease: Lease): Promise<void> {
    while (this.#held) await this.#held.promise;
    this.#ending.add(lease);
    const done = () => this.#ending.delete(lease);
    void lease.reclaimed?.then(done, done);
  }

  /** Leases past their slices' release, finishing their reclaim (see #pastRelease). */
  readonly #ending = new Set<Lease>();

  /** Reclaims asked for while held (their reasons): the handover carries them. */
  get deferredReclaims(): ReadonlyMap<Lease, string> {
    return this.#deferred;
  }

  /** Let held reclaims run (a rollback). */
  unhold(): void {
    const held = this.#held;
    this.#held = null;
    this.#deferred.clear();
    this.watcher.resume();
    held?.resolve();
  }

  #held: { promise: Promise<void>; resolve(): void } | null = null;
  readonly #deferred = new Map<Lease, string>();

  async #reclaim(lease: Lease, reason: string): Promise<void> {
    const t0 = process.hrtime.bigint();
    lease.state = 'reclaiming';
    lease.endReason = reason;
    lease.revokeTimer?.cancel();
    this.emit('state', lease);
    this.audit.write({ event: 'reclaim', lease: lease.id, pid: lease.ctx.pid, uid: lease.ctx.uid, reason });
    // A revoke's deadline passed: whoever maps an audited slice now is killed before the hang-up below, which
    // a holder answers by unmapping (then no later scan would see it, and the kill would depend on timing).
    if (lease.deadline !== null && Date.now() >= lease.deadline && this.direct?.has(lease.id))
      this.direct.killMappers(lease.id);
    lease.disconnect?.(reason);
    // Requests the session had in progress finish first: they see the lease is no longer live and undo
    // what they did, so nothing they map or wire can appear after the steps below.
    await lease.settle();
    if (this.#deviceLost(lease)) return this.#forget(lease, reason, t0);
    const problems: string[] = [];
    // An unmap or revoke failed, or a quiesce or reset did not finish: this lease's window, slices or queue
    // may still be reachable or running.
    let unsafe = false;
    const step = async (what: string, fn: () => Promise<void>, critical: boolean | 'on-timeout') => {
      try {
        // A command that never left the broker (a transient sendmsg failure) is sent again (local-retry.ts).
        await retryLocalTransient(fn);
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
        const code = (err as { code?: string }).code;
        if (critical === 'on-timeout' ? code === 'ETIMEDOUT' : critical && code !== 'ENOENT') unsafe = true;
      }
    };
    // A holder that wired REQ was offered notice, and the devlease client reads a faulting slice as revoked:
    // its leftover mappings fault. One that did not (a stock client: QEMU never wires REQ) is not killed for
    // it: the device detaches from the slice's memory and the holder keeps a page that reaches nothing.
    const fault = lease.reqFd !== null && !lease.reqFd.closed;
    const units = [...lease.slices.values()].flat();
    let revoked = this.config.lifetime.revoke && this.device.capabilities.revocableSlices;
    // The slices are revoked first, the quiesce right behind them on the device's one connection (served in
    // this order): the holder loses its mappings one device round trip after reclaim begins (SA-1: its queue
    // page, so it can no longer ring or rewrite its rings while the queue is stopped), and the device takes
    // the stop in the same round trip. Revoking needs no quiesce first: a slice is the device's own memory,
    // the device answers only once it no longer uses the old backing, and nothing of the holder's memory
    // (the IOVA maps) is let go of until the quiesce has finished below.
    const revokes = revoked
      ? units.map((u) => step('revoke slice', () => this.device.revokeSlice(u.deviceFd, { fault }), false))
      : [];
    // A quiesce that fails outright (the device connection went) leaves the rest to device recovery; one that
    // times out leaves work running on a live device.
    await step('quiesce', () => this.driver.quiesce(lease.resources), 'on-timeout');
    // With the work stopped, unwiring and unmapping depend on none of each other: they go to the device
    // together (served in this order on its one connection), so reclaim waits for one more round trip.
    const irqIndex = lease.resources.irqIndex ?? VFIO_PCI_MSIX_IRQ_INDEX;
    await Promise.all([
      ...lease.resources.vectors.map((v) =>
        step(`unwire vector ${v}`, () => this.device.setIrqs(irqIndex, v, [null]), true),
      ),
      unmapAll(this.device, lease, step),
      ...revokes,
    ]);
    lease.errFd?.close();
    lease.reqFd?.close();
    lease.noticeFd?.close();
    // A slice whose revoke failed falls back to waiting for its observed release.
    if (revoked && problems.some((p) => p.startsWith('revoke slice'))) revoked = false;
    if (!revoked && units.some((u) => u.outstanding > 0)) {
      lease.state = 'awaiting-release';
      this.emit('state', lease);
      this.audit.write({
        event: 'awaiting-release',
        lease: lease.id,
        outstanding: units.map((u) => u.outstanding),
      });
      lease.parked();
      await Promise.race([Promise.all(units.map((u) => u.whenReleased())), this.#lostOf(lease)]);
    }
    const direct = this.direct?.has(lease.id) ? this.direct : null;
    if (direct) await this.#awaitDirectRelease(lease, direct);
    if (lease.state === 'awaiting-release') await this.#pastRelease(lease);
    // The device went away while we worked: nothing of it can be cleaned, and nothing of it is reused.
    if (this.#deviceLost(lease)) return this.#forget(lease, reason, t0, problems);
    if (!revoked && (units.length || direct)) {
      // Nobody holds the slices any more, but they still hold what the last client left: scrub before reuse.
      await step('scrub', () => this.driver.scrub(lease.resources), true);
    }
    if (this.#deviceLost(lease)) return this.#forget(lease, reason, t0, problems);
    // The next grant of these resources finds them ready (SA-1: the queue reset after its last holder lost
    // the queue page). Not where scrub already did it; a failure leaves the work to the grant.
    if (revoked && !unsafe && this.driver.prepare)
      await step('prepare', () => this.driver.prepare!(lease.resources), false);
    if (this.#deviceLost(lease)) return this.#forget(lease, reason, t0, problems);
    for (const u of units) u.dispose(this.watcher);
    direct?.forget(lease.id);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (unsafe) {
      // Never hand these resources to another client; the operator sees why (devlease leases, audit).
      lease.state = 'quarantined';
      lease.quarantineReason = problems.join('; ');
      this.audit.write({ event: 'quarantined', lease: lease.id, ms, problems });
      this.emit('state', lease);
      lease.parked();
      return;
    }
    this.driver.release(lease.resources);
    lease.state = 'released';
    this.#leases.delete(lease.id);
    lease.countIn(null);
    this.audit.write({
      event: 'released',
      lease: lease.id,
      ms,
      revoked,
      // How the slices were revoked: left faulting ('fault') or only detached from the device ('detach').
      ...(revoked && units.length ? { revokedAs: fault ? 'fault' : 'detach' } : {}),
      problems,
    });
    this.emit('state', lease);
    this.emit('released', lease);
    lease.parked();
  }

  /**
   * Audited slices (audit-scan/direct-slices.ts) go back only when no process maps them any more, as the /proc
   * scan sees it: a forked child that inherited the mapping holds the slice until it exits. A revoke's deadline
   * (the lease has one) first kills every process still mapping them (audit.deadline_action).
   */
  async #awaitDirectRelease(lease: Lease, direct: DirectSlices): Promise<void> {
    lease.state = 'awaiting-release';
    this.emit('state', lease);
    this.audit.write({ event: 'awaiting-release', lease: lease.id, direct: true });
    lease.parked();
    await Promise.race([direct.whenReleased(lease.id, lease.deadline !== null), this.#lostOf(lease)]);
  }

  /** Whether the device connection this lease was granted on is gone. */
  #deviceLost(lease: Lease): boolean {
    return lease.generation !== this.#generation;
  }

  /** Settles when the device `lease` was granted on is lost (at once if it already is). */
  #lostOf(lease: Lease): Promise<void> {
    return this.#deviceLost(lease) ? Promise.resolve() : this.#lost.promise;
  }

  /**
   * End a lease whose device connection is gone. The device process took its DMA mappings, interrupt wiring
   * and slice memory with it, so there is nothing to quiesce, unmap, revoke or scrub, and its resources are
   * not returned to the driver: the next boot makes new pools. A client still mapping a slice of the old
   * device reaches only that dead device's memory.
   */
  #forget(lease: Lease, reason: string, t0: bigint, problems: string[] = []): void {
    lease.revokeTimer?.cancel();
    lease.errFd?.close();
    lease.reqFd?.close();
    lease.noticeFd?.close();
    const units = [...lease.slices.values()].flat();
    const outstanding = units.reduce((n, u) => n + u.outstanding, 0);
    for (const u of units) u.dispose(this.watcher);
    this.direct?.forget(lease.id);
    lease.mappings.clear();
    lease.state = 'released';
    this.#leases.delete(lease.id);
    lease.countIn(null);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    this.audit.write({
      event: 'released',
      lease: lease.id,
      ms,
      deviceLost: true,
      reason,
      outstandingSliceFds: outstanding,
      problems,
    });
    this.emit('state', lease);
    this.emit('released', lease);
    lease.parked();
  }

  /**
   * The device connection is lost. Every lease goes: each is reclaimed without asking the device anything
   * (leases already parked, waiting for a client or quarantined, end too). Resolves when none is left, so the
   * driver can boot the device again with nothing of the old generation still running.
   */
  async deviceLost(reason: string): Promise<void> {
    this.#generation++;
    const lost = this.#lost;
    this.#lost = deferred();
    lost.resolve();
    const why = `device lost: ${reason}`;
    for (const l of [...this.#leases.values()]) {
      if (l.state === 'quarantined') this.#forget(l, why, process.hrtime.bigint());
      else void this.reclaim(l, why);
    }
    await Promise.all([...this.#leases.values()].map((l) => l.reclaimed));
  }

  /**
   * Reclaim everything (device hang or reset, broker shutdown). Waits until each lease is released, or parked
   * (awaiting the release of its slices, or quarantined): one client holding a mapping cannot stall recovery.
   */
  async reclaimAll(reason: string): Promise<void> {
    await Promise.all(
      [...this.#leases.values()].map((l) => {
        void this.reclaim(l, reason);
        return l.whenParked;
      }),
    );
  }
}

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}
