// Broker configuration: a TOML file, validated field by field. Every error
// names the field (dotted path) and what is wrong with it, so a bad config
// fails at start with a message an operator can act on.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import type { DriverConfig, IovaViewMode } from '../drivers/driver.js';
import { DevleaseError } from '../errors.js';
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
  };
  /** The SA-1 driver's settings (documented where the driver declares them). */
  sa1: DriverConfig['sa1'];
  policy: {
    rules: PolicyRule[];
    /** Optional module exporting lease(ctx, req) and map(ctx, req) hooks. */
    module: string | null;
    hookTimeoutMs: number;
    /**
     * After a reload (devlease reload, SIGHUP), leases the new policy would refuse: kept to their end, or revoked
     * with a deadline of `onReloadDeadlineMs`.
     */
    onReload: 'keep' | 'revoke';
    onReloadDeadlineMs: number;
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

/** A config file or value that cannot be used: code ERR_DEVLEASE_CONFIG, the offending key in `field`. */
export class ConfigError extends DevleaseError {
  declare readonly code: 'ERR_DEVLEASE_CONFIG';
  readonly field: string;
  constructor(field: string, problem: string) {
    super('ERR_DEVLEASE_CONFIG', `config: ${field}: ${problem}`, { reason: problem });
    this.name = 'ConfigError';
    this.field = field;
  }
}

const DEFAULT_RULE: PolicyRule = {
  match: { any: true },
  kinds: ['*'],
  maxLeases: 'fair',
  maxMappedBytes: 1n << 32n,
  maxMappings: 1024,
};

/** No lease limit beyond the device's own size. */
const UNLIMITED_LEASES = 1 << 20;

/**
 * Without configured rules: root and the broker's own uid lease without a count limit (they own the device
 * anyway), everyone else a fair share each — the lease sockets are 0666, so one local uid must not be able
 * to take every queue and refuse the rest.
 */
function defaultRules(): PolicyRule[] {
  const owners = [...new Set([0, process.geteuid?.() ?? 0])];
  return [
    ...owners.map((uid) => ({ ...DEFAULT_RULE, match: { uid }, maxLeases: UNLIMITED_LEASES })),
    DEFAULT_RULE,
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
    lifetime: { revoke: true, defaultDeadlineMs: 1000, quiesceTimeoutMs: 500 },
    sa1: {
      firmware: null,
      windowSize: 4n << 30n,
      iovaView: 'translated',
      maxDevmemGranules: 16,
      heartbeatMs: 100,
      responseTimeoutMs: 2000,
    },
    policy: {
      rules: defaultRules(),
      module: null,
      hookTimeoutMs: 200,
      onReload: 'keep',
      onReloadDeadlineMs: 5000,
    },
    auditLog: null,
    directAudit: { ...DEFAULT_DIRECT_AUDIT },
    metrics: { listen: null, mode: 0o660 },
    log: { level: 'info', format: 'auto' },
  };
}

type Table = Record<string, unknown>;

/** A cursor over one TOML table that records which keys were read, so unknown keys are reported. */
class Fields {
  readonly #seen = new Set<string>();
  readonly path: string;
  readonly #t: Table;
  constructor(path: string, t: Table) {
    this.path = path;
    this.#t = t;
  }
  #name(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }
  has(key: string): boolean {
    return key in this.#t;
  }
  raw(key: string): unknown {
    this.#seen.add(key);
    return this.#t[key];
  }
  string(key: string, dflt: string): string;
  string(key: string, dflt: null): string | null;
  string(key: string, dflt: string | null): string | null {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'string' || v.length === 0)
      throw new ConfigError(this.#name(key), 'must be a non-empty string');
    return v;
  }
  bool(key: string, dflt: boolean): boolean {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'boolean') throw new ConfigError(this.#name(key), 'must be true or false');
    return v;
  }
  int(key: string, dflt: number, min: number, max: number): number {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      throw new ConfigError(this.#name(key), `must be an integer from ${min} to ${max} (got ${String(v)})`);
    }
    return n;
  }
  /** A byte size: an integer or a string like "64KiB", "2MiB", "1GiB". */
  bytes(key: string, dflt: bigint, min: bigint, max: bigint): bigint {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    const b = parseBytes(v);
    if (b === null || b < min || b > max) {
      throw new ConfigError(
        this.#name(key),
        `must be a byte size from ${min} to ${max}, e.g. 4096 or "1GiB" (got ${String(v)})`,
      );
    }
    return b;
  }
  table(key: string): Fields {
    const v = this.raw(key);
    if (v === undefined) return new Fields(this.#name(key), {});
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new ConfigError(this.#name(key), 'must be a table');
    }
    return new Fields(this.#name(key), v as Table);
  }
  /** Throws for keys that no reader asked for: a typo must not be silently ignored. */
  done(): void {
    for (const key of Object.keys(this.#t)) {
      if (!this.#seen.has(key)) throw new ConfigError(this.#name(key), 'unknown key');
    }
  }
}

const UNITS: Record<string, bigint> = {
  '': 1n,
  B: 1n,
  KiB: 1n << 10n,
  MiB: 1n << 20n,
  GiB: 1n << 30n,
  TiB: 1n << 40n,
};

export function parseBytes(v: unknown): bigint | null {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? BigInt(v) : null;
  if (typeof v === 'bigint') return v;
  if (typeof v !== 'string') return null;
  const m = /^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*$/.exec(v);
  if (!m) return null;
  return BigInt(m[1] as string) * (UNITS[m[2] ?? ''] as bigint);
}

function groupId(f: Fields, key: string): number | null {
  const v = f.raw(key);
  if (v === undefined) return null;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  throw new ConfigError(`${f.path}.${key}`, 'must be a numeric gid (names are not resolved)');
}

/** max_leases: "fair" (the default) or a count. */
function leaseLimit(f: Fields, rule: string): LeaseLimit {
  const v = f.raw('max_leases');
  if (v === undefined || v === 'fair') return 'fair';
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > UNLIMITED_LEASES) {
    throw new ConfigError(
      `${rule}.max_leases`,
      `must be "fair" or an integer from 0 to ${UNLIMITED_LEASES} (got ${String(v)})`,
    );
  }
  return n;
}

function parseRule(f: Fields, i: number): PolicyRule {
  const name = `policy.rule[${i}]`;
  const match: PolicyRule['match'] = {};
  if (f.has('uid')) match.uid = f.int('uid', 0, 0, 0xfffffffe);
  if (f.has('gid')) match.gid = f.int('gid', 0, 0, 0xfffffffe);
  if (f.has('any')) {
    if (f.raw('any') !== true) throw new ConfigError(`${name}.any`, 'must be true when present');
    match.any = true;
  }
  const selectors = Object.keys(match).length;
  if (selectors !== 1) throw new ConfigError(name, 'needs exactly one of uid, gid or any = true');
  const kindsRaw = f.raw('kinds') ?? ['*'];
  if (!Array.isArray(kindsRaw) || kindsRaw.some((k) => typeof k !== 'string' || k === '')) {
    throw new ConfigError(`${name}.kinds`, 'must be a list of lease kind names (or ["*"])');
  }
  const rule: PolicyRule = {
    match,
    kinds: kindsRaw as string[],
    maxLeases: leaseLimit(f, name),
    maxMappedBytes: f.bytes('max_mapped_bytes', DEFAULT_RULE.maxMappedBytes, 0n, 1n << 48n),
    maxMappings: f.int('max_mappings', DEFAULT_RULE.maxMappings, 0, 1 << 20),
  };
  f.done();
  return rule;
}

function parseDirectAudit(f: Fields, d: DirectAuditConfig): DirectAuditConfig {
  const action = f.string('action', d.action);
  if (action !== 'report' && action !== 'revoke' && action !== 'kill')
    throw new ConfigError('audit.action', `must be "report", "revoke" or "kill", got "${action}"`);
  const deadlineAction = f.string('deadline_action', d.deadlineAction);
  if (deadlineAction !== 'kill' && deadlineAction !== 'report')
    throw new ConfigError('audit.deadline_action', `must be "kill" or "report", got "${deadlineAction}"`);
  return {
    action,
    deadlineAction,
    periodMs: f.int('period_ms', d.periodMs, 50, 600_000),
    handoffGraceMs: f.int('handoff_grace_ms', d.handoffGraceMs, 0, 600_000),
  };
}

/** Validate an already-parsed TOML document. */
export function configFromObject(doc: Table): BrokerConfig {
  const d = defaultConfig();
  const top = new Fields('', doc);
  const rundir = top.string('rundir', d.rundir);
  const device = top.table('device');
  const deviceName = device.string('name', d.deviceName);
  if (!/^[A-Za-z0-9_.-]+$/.test(deviceName)) {
    throw new ConfigError(
      'device.name',
      'may contain only letters, digits, ".", "_" and "-" (it names a folder)',
    );
  }
  const driverModule = device.string('driver', null);
  const reconnect = {
    enabled: device.bool('reconnect', d.reconnect.enabled),
    initialMs: device.int('reconnect_initial_ms', d.reconnect.initialMs, 1, 60_000),
    maxMs: device.int('reconnect_max_ms', d.reconnect.maxMs, 1, 600_000),
  };
  if (reconnect.maxMs < reconnect.initialMs) {
    throw new ConfigError(
      'device.reconnect_max_ms',
      `must be at least device.reconnect_initial_ms (${reconnect.initialMs}), got ${reconnect.maxMs}`,
    );
  }
  const recovery = {
    attempts: device.int('recovery_attempts', d.recovery.attempts, 1, 100),
    backoffMs: device.int('recovery_backoff_ms', d.recovery.backoffMs, 1, 60_000),
    backoffMaxMs: device.int('recovery_backoff_max_ms', d.recovery.backoffMaxMs, 1, 600_000),
  };
  if (recovery.backoffMaxMs < recovery.backoffMs) {
    throw new ConfigError(
      'device.recovery_backoff_max_ms',
      `must be at least device.recovery_backoff_ms (${recovery.backoffMs}), got ${recovery.backoffMaxMs}`,
    );
  }
  device.done();

  const sock = top.table('sockets');
  const sockets = {
    mode: sock.int('mode', d.sockets.mode, 0, 0o777),
    group: groupId(sock, 'group'),
    versionTimeoutMs: sock.int('version_timeout_ms', d.sockets.versionTimeoutMs, 10, 600_000),
    maxPending: sock.int('max_pending', d.sockets.maxPending, 1, 1 << 16),
    maxPendingPerUid: sock.int('max_pending_per_uid', d.sockets.maxPendingPerUid, 1, 1 << 16),
  };
  sock.done();
  const adm = top.table('admin');
  const admin = { mode: adm.int('mode', d.admin.mode, 0, 0o777), group: groupId(adm, 'group') };
  adm.done();

  const lay = top.table('layout');
  const pageSize = lay.int('page_size', d.layout.pageSize, 4096, 65536);
  if ((pageSize & (pageSize - 1)) !== 0) throw new ConfigError('layout.page_size', 'must be a power of two');
  const layout = { pageSize, allowCooperative: lay.bool('allow_cooperative', d.layout.allowCooperative) };
  lay.done();

  const life = top.table('lifetime');
  const lifetime = {
    revoke: life.bool('revoke', d.lifetime.revoke),
    defaultDeadlineMs: life.int('default_deadline_ms', d.lifetime.defaultDeadlineMs, 0, 3_600_000),
    quiesceTimeoutMs: life.int('quiesce_timeout_ms', d.lifetime.quiesceTimeoutMs, 1, 60_000),
  };
  life.done();

  const s = top.table('sa1');
  const windowSize = s.bytes('window_size', d.sa1.windowSize, 4096n, 1n << 40n);
  if ((windowSize & (windowSize - 1n)) !== 0n)
    throw new ConfigError('sa1.window_size', 'must be a power of two');
  const iovaView = s.string('iova_view', d.sa1.iovaView);
  if (iovaView !== 'translated' && iovaView !== 'identity')
    throw new ConfigError('sa1.iova_view', `must be "translated" or "identity", got "${iovaView}"`);
  const sa1 = {
    firmware: s.string('firmware', null),
    windowSize,
    iovaView: iovaView as IovaViewMode,
    maxDevmemGranules: s.int('max_devmem_granules', d.sa1.maxDevmemGranules, 0, 1 << 16),
    heartbeatMs: s.int('heartbeat_ms', d.sa1.heartbeatMs, 20, 60_000),
    responseTimeoutMs: s.int('response_timeout_ms', d.sa1.responseTimeoutMs, 100, 600_000),
  };
  s.done();

  const pol = top.table('policy');
  const rulesRaw = pol.raw('rule');
  let rules = d.policy.rules;
  if (rulesRaw !== undefined) {
    if (!Array.isArray(rulesRaw))
      throw new ConfigError('policy.rule', 'must be an array of tables ([[policy.rule]])');
    rules = rulesRaw.map((r, i) => {
      if (typeof r !== 'object' || r === null || Array.isArray(r)) {
        throw new ConfigError(`policy.rule[${i}]`, 'must be a table');
      }
      return parseRule(new Fields(`policy.rule[${i}]`, r as Table), i);
    });
  }
  const policy = {
    rules,
    module: pol.string('module', null),
    hookTimeoutMs: pol.int('hook_timeout_ms', d.policy.hookTimeoutMs, 1, 60_000),
    onReload: pol.string('on_reload', d.policy.onReload) as 'keep' | 'revoke',
    onReloadDeadlineMs: pol.int('on_reload_deadline_ms', d.policy.onReloadDeadlineMs, 0, 3_600_000),
  };
  if (policy.onReload !== 'keep' && policy.onReload !== 'revoke') {
    throw new ConfigError('policy.on_reload', `must be "keep" or "revoke" (got "${policy.onReload}")`);
  }
  pol.done();

  const audit = top.table('audit');
  const auditLog = audit.string('path', null);
  const directAudit = parseDirectAudit(audit, d.directAudit);
  audit.done();
  const met = top.table('metrics');
  const metrics = {
    listen: metricsListen(met.string('listen', null)),
    mode: met.int('mode', d.metrics.mode, 0, 0o777),
  };
  met.done();
  const lg = top.table('log');
  const log = {
    level: lg.string('level', d.log.level) as LogLevel,
    format: lg.string('format', d.log.format) as LogFormat,
  };
  if (!(LOG_LEVELS as readonly string[]).includes(log.level)) {
    throw new ConfigError('log.level', `must be one of ${LOG_LEVELS.join(', ')} (got "${log.level}")`);
  }
  if (!['auto', 'json', 'pretty'].includes(log.format)) {
    throw new ConfigError('log.format', `must be "auto", "json" or "pretty" (got "${log.format}")`);
  }
  lg.done();
  top.done();
  return {
    rundir,
    deviceName,
    driverModule,
    reconnect,
    recovery,
    sockets,
    admin,
    layout,
    lifetime,
    sa1,
    policy,
    auditLog,
    directAudit,
    metrics,
    log,
  };
}

/** metrics.listen: an absolute socket path, or HOST:PORT ([v6]:PORT), port 0 meaning any free one. */
function metricsListen(v: string | null): string | null {
  if (v === null || v.startsWith('/')) return v;
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d+)$/.exec(v);
  const port = m ? Number(m[2]) : 0;
  if (!m || port > 65535)
    throw new ConfigError(
      'metrics.listen',
      `must be an absolute unix socket path or HOST:PORT (e.g. 127.0.0.1:9464), got '${v}'`,
    );
  return v;
}

export function parseConfig(text: string, source = 'config'): BrokerConfig {
  let doc: Table;
  try {
    doc = parseToml(text) as Table;
  } catch (err) {
    throw new ConfigError('(file)', `${source} is not valid TOML: ${(err as Error).message.split('\n')[0]}`);
  }
  return configFromObject(doc);
}

export function loadConfig(path: string): BrokerConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('(file)', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  const config = parseConfig(text, path);
  // A driver module is named relative to the config file that names it, as an operator reads the file.
  if (config.driverModule) config.driverModule = resolve(dirname(path), config.driverModule);
  return config;
}
