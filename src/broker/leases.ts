// The lease table: the leases and what each uid holds, the device connection's generations, and an
// upgrade's hold on reclaims. A lease's life is in the files beside it: grants after policy (lease-grant.ts),
// the owner's revoke with notice and a deadline (lease-end.ts), and reclaim in the one safe order — quiesce
// the work, unmap the memory, revoke (or wait for the release of) the slices — before anything goes back to
// the pool (lease-reclaim.ts).

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import type { DeviceFault, Driver } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import { RateLimitedLog } from '../sys/rate-limited-log.js';
import type { AuditLog } from './audit.js';
import type { DirectSlices } from './audit-scan/direct-slices.js';
import type { BrokerConfig } from './config.js';
import { FAULTS_KEPT, type Lease } from './lease.js';
import { DmaRelay } from './lease-dma-relay.js';
import { letGoOfHolds, revokeLease } from './lease-end.js';
import { grantLease } from './lease-grant.js';
import { forgetLease, forgetPrepared, type ReclaimOps, reclaimLease } from './lease-reclaim.js';
import { UsageAccounts } from './lease-usage.js';
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
  /** Each grant in progress, settled either way (a reload waits for those that checked the old policy). */
  readonly #grantsInProgress = new Set<Promise<Lease>>();
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
    this.relay = new DmaRelay(device, audit, (line) => this.log(line));
    watcher.onOverflow = () => {
      const leases = this.withSliceCountLost().map((l) => l.id);
      this.audit.write({ event: 'slice-count-lost', leases });
      this.log(
        `slice release counts lost (the inotify queue overflowed): leases ${leases.join(', ') || 'none'}`,
      );
    };
  }

  /**
   * Leases holding a slice whose release count lost events (slices.ts): their reclaim quarantines. Not those
   * already quarantined: their units are closed, and nothing of them is handed over or trusted again.
   */
  withSliceCountLost(): Lease[] {
    return this.all().filter((l) =>
      [...l.slices.values()].some((us) => us.some((u) => u.countLost && !u.deviceFd.closed)),
    );
  }

  /** The leases' memory mapped without an fd, which the broker relays (policy.dma_without_fd = "relay"). */
  readonly relay: DmaRelay;

  /** The audited slice provider, on a device that hands out its fd for direct slices (set by the broker). */
  direct: DirectSlices | null = null;

  #suspended: string | null = null;
  #suspensions = 0;
  /** Why grants are suspended (recovery, shutdown), or null. Unlike draining, this is not the owner's choice. */
  get suspended(): string | null {
    return this.#suspended;
  }
  set suspended(why: string | null) {
    if (why !== null && this.#suspended === null) this.#suspensions++;
    this.#suspended = why;
  }
  /**
   * How many times grants were suspended: a grant in progress compares it before and after its device commands,
   * since a recovery (or shutdown) may have begun and even ended meanwhile, and reclaimed only the leases then in
   * the table, not the one being granted.
   */
  get suspensions(): number {
    return this.#suspensions;
  }
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

  /**
   * What only a reclaim (lease-reclaim.ts) does to the table, handed to it alone: the table's own surface
   * (broker.leases, which embedders reach) has no way to drop a lease without reclaiming it.
   */
  readonly #reclaimOps: ReclaimOps = {
    remove: (lease) => this.#remove(lease),
    pastRelease: (lease) => this.#pastRelease(lease),
    lostOf: (lease) => this.#lostOf(lease),
  };

  /** Take a lease out of the table: its reclaim has ended (released, or forgotten with its device). */
  #remove(lease: Lease): void {
    this.#leases.delete(lease.id);
    lease.countIn(null);
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

  /**
   * Resolves once every grant in progress now has ended (each is bounded: policy hook and device deadlines).
   * A reload waits for them before it checks the leases against its new policy: one that passed the old
   * policy and was still being programmed would be added after the check, never checked.
   */
  async grantsSettled(): Promise<void> {
    await Promise.allSettled([...this.#grantsInProgress]);
  }

  /**
   * Policy check, resources, device programming, slice fds. Throws VfioError with the reason on refusal.
   * `decided` gets the lease once policy and resources have decided its shape, before the device commands.
   */
  async grant(ctx: CallerContext, req: LeaseRequest, decided?: (lease: Lease) => void): Promise<Lease> {
    this.#granting.set(ctx.uid, (this.#granting.get(ctx.uid) ?? 0) + 1);
    const granting = grantLease(this, ctx, req, decided);
    this.#grantsInProgress.add(granting);
    try {
      return await granting;
    } finally {
      this.#grantsInProgress.delete(granting);
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
      l.faultsTotal++;
      if (l.faults.length > FAULTS_KEPT) l.faults.shift();
      l.notify(f.queue === null ? 'err' : 'notice');
    }
  }

  /**
   * Take everything back. Idempotent: a second call (pidfd and hang-up both firing) returns the same promise.
   * Order (lease-reclaim.ts): disconnect; revoke slices, quiesce and unwire vectors in one batch; unmap every
   * IOVA; where a revoke failed, wait for the slice's release.
   */
  reclaim(lease: Lease, reason: string): Promise<void> {
    if (lease.reclaimed) return lease.reclaimed;
    const held = this.#held;
    if (held) {
      // An upgrade holds the table (handover/): the reclaim waits for its outcome. Rolled back, it runs
      // here; handed over, the new broker sees the same hang-up, exit or deadline and reclaims it there.
      this.#deferred.set(lease, reason);
      lease.reclaimed = held.promise
        .then(() => reclaimLease(this, this.#reclaimOps, lease, reason))
        .catch((err) => this.#reclaimFailed(lease, err));
      return lease.reclaimed;
    }
    lease.reclaimed = reclaimLease(this, this.#reclaimOps, lease, reason).catch((err) =>
      this.#reclaimFailed(lease, err),
    );
    return lease.reclaimed;
  }

  /**
   * A reclaim that threw (a bug: its device steps report their failures, they do not throw). Whatever it had
   * not given back is kept out of the pool, as a quarantine says, and `reclaimed` resolves: callers fire and
   * forget reclaims, so a rejection would go unhandled and end the broker, and a recovery or shutdown waiting
   * for the lease to park would wait for good.
   */
  #reclaimFailed(lease: Lease, err: unknown): void {
    const why = `reclaim failed: ${(err as Error)?.message ?? String(err)}`;
    this.log(`lease ${lease.id}: ${why}`);
    if (lease.state !== 'released' && lease.state !== 'quarantined') {
      // The session ends and what the broker holds for the lease goes, each step on its own, as a
      // quarantine's reclaim lets them go; the device resources stay out of the pool, and the slice fds
      // prepared for their next grant go (they are not readied).
      const problems = [why];
      try {
        lease.disconnect?.(why);
      } catch (e) {
        problems.push(`disconnect: ${(e as Error)?.message ?? String(e)}`);
      }
      problems.push(...letGoOfHolds(this, lease));
      try {
        // Not after a device loss: the prepared fds for these ranges would be the new device's.
        if (lease.generation === this.generation) forgetPrepared(this, lease);
      } catch (e) {
        problems.push(`forget prepared slice fds: ${(e as Error)?.message ?? String(e)}`);
      }
      lease.state = 'quarantined';
      lease.quarantineReason = why;
      this.audit.write({ event: 'quarantined', lease: lease.id, problems });
      try {
        this.emit('state', lease);
      } catch {
        // the listener that threw above may throw again: the lease is quarantined all the same
      }
    }
    lease.parked();
  }

  /**
   * Hold every reclaim until unhold() (an upgrade's quiesce), after those in progress have finished or parked
   * awaiting the release of their slices (an upgrade carries those: the new broker finishes them), and stop
   * reading slice events (they stay queued: the watcher's inotify instance goes to the new broker), and stop the
   * audit of direct slices (its entries go to the new broker).
   */
  async hold(): Promise<void> {
    this.#held ??= deferred();
    this.watcher.pause();
    await Promise.all([
      ...this.all().flatMap((l) =>
        l.state === 'reclaiming' && l.reclaimed ? [Promise.race([l.reclaimed, l.whenParked])] : [],
      ),
      // Released before the hold: their reclaim finishes (scrub, release) before anything is described.
      ...[...this.#ending].map((l) => l.reclaimed),
    ]);
    // After those: a reclaim in progress waits on a scan to see its audited slices released.
    this.direct?.auditor.hold();
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
    this.direct?.auditor.unhold();
    held?.resolve();
  }

  #held: { promise: Promise<void>; resolve(): void } | null = null;
  readonly #deferred = new Map<Lease, string>();

  /** Settles when the device `lease` was granted on is lost (at once if it already is). */
  #lostOf(lease: Lease): Promise<void> {
    return lease.generation !== this.#generation ? Promise.resolve() : this.#lost.promise;
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
      if (l.state === 'quarantined') forgetLease(this, this.#reclaimOps, l, why, process.hrtime.bigint());
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
