// One lease: what a client holds, and where it is in its life.
//
//   active ──revoke(deadline)──▶ revoking ──deadline / session end──▶ reclaiming
//   active ──session end / process exit──────────────────────────────▶ reclaiming
//   reclaiming ──slices revoked──▶ released
//   reclaiming ──device cannot revoke──▶ awaiting-release ──release observed, slices scrubbed──▶ released
//   reclaiming ──an unmap or revoke failed, a quiesce or reset timed out──▶ quarantined (never reused)
//   any state ──the device connection is lost──▶ released (nothing is asked of the lost device; see lease-reclaim.ts)

import type { DeviceFault, LeaseResources } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';
import type { LongTimer } from '../util/long-timer.js';
import type { PeerDma } from '../vfio/user/peer-dma.js';
import type { RelayCounters } from './lease-dma-relay.js';
import type { IntxRelay } from './lease-intx.js';
import { LeaseMappings, type UsageAccounts } from './lease-usage.js';
import type { CallerContext, LeaseRequest, Usage } from './policy.js';
import type { SliceUnit } from './slices.js';

/** The longest revoke deadline accepted (24 h): a lease the owner wants back is not left running for weeks. */
export const MAX_REVOKE_DEADLINE_MS = 24 * 3600 * 1000;
/** Fault records a lease's info keeps (the last ones): the info region's JSON has room for them. */
export const FAULTS_KEPT = 16;

/** Throws EINVAL naming deadlineMs unless it is an integer from 0 to MAX_REVOKE_DEADLINE_MS. */
export function checkRevokeDeadline(deadlineMs: unknown): asserts deadlineMs is number {
  if (
    typeof deadlineMs !== 'number' ||
    !Number.isInteger(deadlineMs) ||
    deadlineMs < 0 ||
    deadlineMs > MAX_REVOKE_DEADLINE_MS
  ) {
    const got = typeof deadlineMs === 'number' ? String(deadlineMs) : typeof deadlineMs;
    throw new VfioError(
      'EINVAL',
      `deadlineMs must be an integer from 0 to ${MAX_REVOKE_DEADLINE_MS} (24 h), got ${got}`,
    );
  }
}

export type LeaseState =
  | 'active'
  | 'revoking'
  | 'reclaiming'
  | 'awaiting-release'
  | 'quarantined'
  | 'released';

export interface LeaseMapping {
  /** As the client gave it (an address of its view). */
  iova: bigint;
  /** Where the device has it (the same for an identity view). */
  deviceIova: bigint;
  size: bigint;
  read: boolean;
  write: boolean;
  /** Mapped without an fd: the device's accesses are relayed to the client (lease-dma-relay.ts). */
  relayed?: boolean;
}

export class Lease {
  readonly id: string;
  readonly kind: string;
  readonly request: LeaseRequest;
  readonly ctx: CallerContext;
  readonly resources: LeaseResources;
  readonly createdAt = Date.now();
  /** The device connection this lease was granted on (LeaseTable counts them): a later one does not hold it. */
  generation = 0;
  #state: LeaseState = 'active';
  /** Why the lease is ending, once it is. */
  endReason: string | null = null;
  /** What failed in reclaim, once the lease is quarantined (its resources are never leased again). */
  quarantineReason: string | null = null;
  /** Revocation deadline (ms since epoch) while `revoking`. */
  deadline: number | null = null;
  readonly mappings = new LeaseMappings();
  /**
   * DMA_MAPs the device may have made without the broker knowing (device IOVAs): the answer timed out (the
   * device may still serve it), or the undo of a map made while the lease ended failed. Reclaim unmaps each
   * exactly as asked (unmapAll); an upgrade is refused while there are any (the state does not carry them).
   */
  readonly maybeMaps: { deviceIova: bigint; size: bigint }[] = [];
  /** The uid accounts this lease counts in while it is in the table (LeaseTable.add/remove), and its share there. */
  #accounts: UsageAccounts | null = null;
  #share: Usage = { leases: 0, mappedBytes: 0n, mappings: 0 };
  /** Slice units per lease region index (a region may be several units: one fd each). */
  readonly slices = new Map<number, SliceUnit[]>();
  /** The client's notification eventfds (ERR: device fault/reset, REQ: revocation notice). */
  errFd: Fd | null = null;
  reqFd: Fd | null = null;
  /** devlease's notice irq (DEVLEASE_NOTICE_IRQ_INDEX): per-queue faults, for clients that negotiated devlease. */
  noticeFd: Fd | null = null;
  /** The relay of a device INTx line that automasks, when that is the lease's vector (lease-intx.ts). */
  intx: IntxRelay | null = null;
  /** Counts the lease's INTx wirings: the latest one keeps its relay (lease-irqs.ts relayIntx). */
  intxGeneration = 0;
  /** Session requests in progress (DMA_MAP, SET_IRQS): reclaim waits for them before it undoes anything. */
  readonly #ops = new Set<Promise<unknown>>();
  /** The owner's revocation deadline timer, cleared when the lease ends first. */
  revokeTimer: LongTimer | null = null;
  /** The last FAULTS_KEPT fault records of this lease; `faultsTotal` counts every one it was sent. */
  readonly faults: DeviceFault[] = [];
  faultsTotal = 0;
  /** The client's memory by DMA_READ/DMA_WRITE on its connection (set by the session): relayed maps use it. */
  peer: PeerDma | null = null;
  /** What its relayed memory cost, from its first relayed map (lease-dma-relay.ts). */
  relayCounters: RelayCounters | null = null;
  /** Disconnects the client's session (set by the session). */
  disconnect: ((reason: string) => void) | null = null;
  /** Settles when the lease is released. */
  reclaimed: Promise<void> | null = null;
  /** Resolves once reclaim is as far as it can go without the client: released, awaiting release, quarantined. */
  readonly whenParked: Promise<void>;
  /** Marks the lease parked (see `whenParked`); idempotent. */
  parked: () => void = () => {};

  constructor(id: string, request: LeaseRequest, ctx: CallerContext, resources: LeaseResources) {
    this.whenParked = new Promise<void>((resolve) => {
      this.parked = resolve;
    });
    this.id = id;
    this.kind = request.kind;
    this.request = request;
    // Object.assign, not a spread: on Node 20 (V8 11.3) `{ ...ctx, lease }` makes a new hidden class nearly every
    // time (docs/performance-history.md, issue 16, twenty-fourth pass §4).
    this.ctx = Object.assign({}, ctx, { lease: { id, kind: request.kind } });
    this.resources = resources;
    this.mappings.onChange = () => this.#recount();
  }

  get state(): LeaseState {
    return this.#state;
  }
  set state(s: LeaseState) {
    this.#state = s;
    this.#recount();
  }

  get mappedBytes(): bigint {
    return this.mappings.bytes;
  }

  /** Count this lease in `accounts` (entering the table) or in none (leaving it). */
  countIn(accounts: UsageAccounts | null): void {
    this.#accounts?.apply(this.ctx.uid, this.#share, -1);
    this.#accounts = accounts;
    this.#share = { leases: 0, mappedBytes: 0n, mappings: 0 };
    this.#recount();
  }

  /** Move this lease's share in its uid's account to what it holds now. */
  #recount(): void {
    const accounts = this.#accounts;
    if (!accounts) return;
    const live = this.live;
    const share: Usage = {
      leases: live ? 1 : 0,
      mappedBytes: live ? this.mappings.bytes : 0n,
      mappings: live ? this.mappings.size : 0,
    };
    // One change of the account by the difference (a map or unmap moves it once, not out and back in).
    const old = this.#share;
    accounts.apply(
      this.ctx.uid,
      {
        leases: share.leases - old.leases,
        mappedBytes: share.mappedBytes - old.mappedBytes,
        mappings: share.mappings - old.mappings,
      },
      1,
    );
    this.#share = share;
  }

  /** Run a session request as tracked work: reclaim waits for it (see `settle()`). */
  track<T>(op: Promise<T>): Promise<T> {
    this.#ops.add(op);
    const done = () => this.#ops.delete(op);
    op.then(done, done);
    return op;
  }

  /** Resolves when every tracked session request has finished (they re-check liveness and undo their work). */
  async settle(): Promise<void> {
    while (this.#ops.size) await Promise.allSettled([...this.#ops]);
  }

  get live(): boolean {
    return this.state === 'active' || this.state === 'revoking';
  }

  /** A session request's first check: ENODEV, naming the lease's state, once it is no longer live. */
  checkLive(): void {
    if (!this.live) throw new VfioError('ENODEV', `lease ${this.id} is ${this.state}`);
  }

  /** Signal an eventfd the client gave us; a client that closed its end is simply not told. */
  notify(which: 'err' | 'req' | 'notice'): void {
    const fd = which === 'err' ? this.errFd : which === 'req' ? this.reqFd : this.noticeFd;
    if (!fd || fd.closed) return;
    try {
      // The fd was checked to be an eventfd and made non-blocking when the client gave it (eventfd-check.ts).
      native.eventfdWrite(fd.fd, 1);
    } catch {
      // a full counter already says "notified"; notices are best effort, the deadline is not
    }
  }

  /** The JSON the client reads from its info region. */
  info(): Record<string, unknown> {
    const r = this.resources;
    return {
      kind: this.kind,
      lease: this.id,
      state: this.state,
      deadline: this.deadline,
      queue: r.queue,
      // The client's IOVA space: what it maps in (for a translated view not the device's addresses).
      iovaWindow: r.view ? { base: hex(r.view.base), size: hex(r.view.size) } : null,
      iovaView: r.view ? { mode: r.view.mode, reason: r.view.reason } : null,
      devmem: r.devmem ? { offset: hex(r.devmem.offset), size: hex(r.devmem.size) } : null,
      vectors: r.vectors.length,
      regions: r.slices.map((s) => ({ index: s.leaseRegion, size: hex(s.size), unit: hex(s.unit) })),
      isolation: r.isolation,
      faults: this.faults.map((f) => ({
        queue: f.queue,
        code: f.code,
        name: f.name,
        address: hex(f.address),
      })),
      // How many there were in all: `faults` keeps the last FAULTS_KEPT, so a client counts new ones by this.
      faultsTotal: this.faultsTotal,
    };
  }

  summary(): Record<string, unknown> {
    return {
      id: this.id,
      kind: this.kind,
      state: this.state,
      pid: this.ctx.pid,
      uid: this.ctx.uid,
      gid: this.ctx.gid,
      exe: this.ctx.exe,
      queue: this.resources.queue,
      iovaView: this.resources.view
        ? {
            mode: this.resources.view.mode,
            base: hex(this.resources.view.base),
            size: hex(this.resources.view.size),
            device: this.resources.window ? hex(this.resources.window.base) : null,
          }
        : null,
      // The level of each resource ('enforced', 'audited', 'cooperative'); the reasons are in the info region.
      isolation: Object.fromEntries(Object.entries(this.resources.isolation).map(([k, v]) => [k, v.level])),
      mappings: this.mappings.size,
      mappedBytes: this.mappedBytes.toString(),
      // Of those, the maps without an fd, whose device accesses the broker relays to the client.
      relayedMappings: this.mappings.relayed,
      relayStats: this.relayCounters
        ? {
            accesses: this.relayCounters.accesses,
            failures: this.relayCounters.failures,
            timeouts: this.relayCounters.timeouts,
            backoffMs: Math.max(0, Math.round(this.relayCounters.backoffUntil - performance.now())),
          }
        : null,
      outstandingSliceFds: [...this.slices.values()].flat().reduce((n, u) => n + u.outstanding, 0),
      deadline: this.deadline,
      since: new Date(this.createdAt).toISOString(),
      endReason: this.endReason,
      quarantineReason: this.quarantineReason,
    };
  }
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
