// What the broker's configuration is: its shape (BrokerConfig and the policy rules), the defaults a file
// leaves in place, and the fair-share limit. Stands alone because most of the broker reads only this — it is
// handed a BrokerConfig — while turning a TOML file into one, with a message for every wrong field, is
// config.ts's job (which re-exports all of this, so the broker imports its configuration from one place).

import type { DriverConfig } from '../drivers/driver.js';
import type { DmaFiles } from '../vfio/user/dma-fd-check.js';
import { DEFAULT_DIRECT_AUDIT, type DirectAuditConfig } from './audit-scan/auditor.js';

/**
 * A lease limit: a count, or 'fair' — a share of the device, ceil(capacity / FAIR_SHARE_DIVISOR) leases,
 * where capacity is how many leases of the kind the device holds at once (SA-1: its queues).
 */
export type LeaseLimit = number | 'fair';

/** With 'fair' limits, at least this many uids can lease at once, whatever one of them takes. */
export const FAIR_SHARE_DIVISOR = 4;

/** The 'fair' limit for a device holding `capacity` leases of a kind (at least 1). */
export function fairShare(capacity: number): number {
  return Math.max(1, Math.ceil(capacity / FAIR_SHARE_DIVISOR));
}

export interface PolicyRule {
  /** Who the rule applies to: a uid, a gid, or everyone (`any`). First match wins. */
  match: { uid?: number; gid?: number; any?: true };
  kinds: string[];
  maxLeases: LeaseLimit;
  maxMappedBytes: bigint;
  maxMappings: number;
}

export interface BrokerConfig {
  /** Where per-device socket folders live: RUNDIR/<device>/<kind>.sock and RUNDIR/<device>/admin.sock. */
  rundir: string;
  /** The device's name in paths and logs. */
  deviceName: string;
  /** A driver module of one's own (docs/DRIVERS.md), tried before the built-in drivers; absolute once loaded from a file. */
  driverModule: string | null;
  /**
   * When a vfio-user device's connection is lost: reconnect (with backoff, first wait `initialMs`, doubling up
   * to `maxMs` between attempts), or exit (false; kernel devices always exit).
   */
  reconnect: { enabled: boolean; initialMs: number; maxMs: number };
  /**
   * Device recovery (after a hang, a reset, or the owner's `devlease reset`): up to `attempts` tries, the
   * first retry after `backoffMs`, the wait doubling up to `backoffMaxMs`.
   */
  recovery: { attempts: number; backoffMs: number; backoffMaxMs: number };
  sockets: {
    mode: number;
    group: number | null;
    /** A lease connection that has not completed VERSION in this long is closed (its socket and pidfd freed). */
    versionTimeoutMs: number;
    /** Connections not yet past VERSION, in all and per uid; one more is refused at once. */
    maxPending: number;
    maxPendingPerUid: number;
  };
  admin: { mode: number; group: number | null };
  layout: {
    /** The page size slices are checked against (4 KiB default, up to 64 KiB). */
    pageSize: number;
    /** Allow layouts that cannot isolate clients, marking those slices cooperative. */
    allowCooperative: boolean;
  };
  lifetime: {
    /** Revoke slices on reclaim (false models devices/kernels that cannot revoke: wait for observed release). */
    revoke: boolean;
    /** Default deadline of an owner's revoke, in ms. */
    defaultDeadlineMs: number;
    /** How long quiescing a queue may take before the broker resets it anyway. */
    quiesceTimeoutMs: number;
    /**
     * At most this many slice fds asked at reclaim for the next grant (issue 16: the grant then needs no slice
     * request of its own); 0: none. Each is an open fd of the broker's until a grant takes it.
     */
    preparedSliceFds: number;
  };
  /** The SA-1 driver's settings (documented where the driver declares them). */
  sa1: DriverConfig['sa1'];
  /** The generic driver's settings (documented where the driver declares them). */
  generic: NonNullable<DriverConfig['generic']>;
  policy: {
    rules: PolicyRule[];
    /** Optional module exporting lease(ctx, req) and map(ctx, req) hooks. */
    module: string | null;
    hookTimeoutMs: number;
    /**
     * How long the module's import may take, at start and at reload (its top-level code: a module that awaits
     * a service that never answers would otherwise hold the start or the reload, and every reload after it).
     */
    loadTimeoutMs: number;
    /** How long a reload's check of the live leases against the new policy may take in all. */
    recheckTimeoutMs: number;
    /**
     * After a reload (devlease reload, SIGHUP), leases the new policy would refuse: kept to their end, or revoked
     * with a deadline of `onReloadDeadlineMs`.
     */
    onReload: 'keep' | 'revoke';
    onReloadDeadlineMs: number;
    /**
     * Which regular files may back a lease's DMA maps: "memory" (memfd, tmpfs, hugetlbfs: never a file system a
     * client serves) or "any" (vfio-user/dma-fd-check.ts).
     */
    dmaFiles: DmaFiles;
    /**
     * A lease's DMA_MAP without an fd (QEMU's guest RAM when it is not shared): refused, or mapped on a vfio-user
     * device and each device access relayed to the client by message (lease-dma-relay.ts) — which makes the
     * device wait on that client (SA-1: every queue) for up to RELAY_ACCESS_MS per access.
     */
    dmaWithoutFd: 'refuse' | 'relay';
  };
  /** JSON-lines audit log; null: stderr only. */
  auditLog: string | null;
  /** The /proc audit of audited (directly mapped) slices: [audit] action, period_ms, ... (docs/AUDITED-SLICES.md). */
  directAudit: DirectAuditConfig;
  /**
   * Prometheus endpoint (docs/OPERATIONS.md): `listen` is a unix socket path (created with `mode`) or
   * HOST:PORT; null (the default): no endpoint. Device counters are read at each scrape.
   */
  metrics: { listen: string | null; mode: number };
  /**
   * The broker's own log (docs/OPERATIONS.md): pino JSON lines on stderr, or human-readable lines ('pretty';
   * 'auto': pretty when stderr is a terminal). The audit log is its own stream and not affected.
   */
  log: { level: LogLevel; format: LogFormat };
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFormat = 'auto' | 'json' | 'pretty';

/**
 * Everyone's rule when none is configured, and what a [[policy.rule]] leaves out is taken from. A new one
 * each call: every config owns its rules (a caller editing one config's rules changes no other's).
 */
export function defaultRule(): PolicyRule {
  return {
    match: { any: true },
    kinds: ['*'],
    maxLeases: 'fair',
    maxMappedBytes: 1n << 32n,
    maxMappings: 1024,
  };
}

/** No lease limit beyond the device's own size. */
export const UNLIMITED_LEASES = 1 << 20;

/**
 * Without configured rules: root and the broker's own uid lease without a count limit (they own the device
 * anyway), everyone else a fair share each — the lease sockets are 0666, so one local uid must not be able
 * to take every queue and refuse the rest.
 */
function defaultRules(): PolicyRule[] {
  const owners = [...new Set([0, process.geteuid?.() ?? 0])];
  return [
    ...owners.map((uid) => ({ ...defaultRule(), match: { uid }, maxLeases: UNLIMITED_LEASES })),
    defaultRule(),
  ];
}

export function defaultConfig(): BrokerConfig {
  return {
    rundir: '/run/devlease',
    deviceName: 'sa1',
    driverModule: null,
    reconnect: { enabled: true, initialMs: 50, maxMs: 2000 },
    recovery: { attempts: 3, backoffMs: 100, backoffMaxMs: 2000 },
    sockets: { mode: 0o666, group: null, versionTimeoutMs: 5000, maxPending: 128, maxPendingPerUid: 32 },
    admin: { mode: 0o600, group: null },
    layout: { pageSize: 4096, allowCooperative: false },
    lifetime: { revoke: true, defaultDeadlineMs: 1000, quiesceTimeoutMs: 500, preparedSliceFds: 8 },
    sa1: {
      firmware: null,
      windowSize: 4n << 30n,
      iovaView: 'translated',
      maxDevmemGranules: 16,
      heartbeatMs: 100,
      responseTimeoutMs: 2000,
    },
    generic: { reuseWithoutReset: false },
    policy: {
      rules: defaultRules(),
      module: null,
      hookTimeoutMs: 200,
      loadTimeoutMs: 5000,
      recheckTimeoutMs: 5000,
      onReload: 'keep',
      onReloadDeadlineMs: 5000,
      dmaFiles: 'memory',
      dmaWithoutFd: 'refuse',
    },
    auditLog: null,
    directAudit: { ...DEFAULT_DIRECT_AUDIT },
    metrics: { listen: null, mode: 0o660 },
    log: { level: 'info', format: 'auto' },
  };
}
