// Broker configuration: a TOML file, validated field by field. Every error
// names the field (dotted path) and what is wrong with it, so a bad config
// fails at start with a message an operator can act on. What the
// configuration is (its shape and defaults) is config-schema.ts.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { MAX_PREPARED_SLICES } from '../device/prepared-slices.js';
import type { IovaViewMode } from '../drivers/driver.js';
import { DevleaseError } from '../errors.js';
import type { DmaFiles } from '../vfio/user/dma-fd-check.js';
import type { DirectAuditConfig } from './audit-scan/auditor.js';
import {
  type BrokerConfig,
  defaultConfig,
  defaultRule,
  type LeaseLimit,
  LOG_LEVELS,
  type LogFormat,
  type LogLevel,
  type PolicyRule,
  UNLIMITED_LEASES,
} from './config-schema.js';

// All of it: the broker imports its configuration from here.
export * from './config-schema.js';

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
  // At most 2^32 - 2: (gid_t)-1 is chown's "leave the group as it is", and Node refuses more.
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xfffffffe) return v;
  throw new ConfigError(
    `${f.path}.${key}`,
    `must be a numeric gid from 0 to 4294967294 (names are not resolved), got ${String(v)}`,
  );
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
  const d = defaultRule();
  const rule: PolicyRule = {
    match,
    kinds: kindsRaw as string[],
    maxLeases: leaseLimit(f, name),
    maxMappedBytes: f.bytes('max_mapped_bytes', d.maxMappedBytes, 0n, 1n << 48n),
    maxMappings: f.int('max_mappings', d.maxMappings, 0, 1 << 20),
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
  // It names a folder under rundir: "." or ".." would put the sockets in rundir or its parent.
  if (!/^[A-Za-z0-9_.-]+$/.test(deviceName) || deviceName === '.' || deviceName === '..') {
    throw new ConfigError(
      'device.name',
      `may contain only letters, digits, ".", "_" and "-", and not be "." or ".." (it names a folder under rundir), got ${JSON.stringify(deviceName)}`,
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
    preparedSliceFds: life.int('prepared_slice_fds', d.lifetime.preparedSliceFds, 0, MAX_PREPARED_SLICES),
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
  const gen = top.table('generic');
  const generic = { reuseWithoutReset: gen.bool('reuse_without_reset', d.generic.reuseWithoutReset) };
  gen.done();

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
    loadTimeoutMs: pol.int('load_timeout_ms', d.policy.loadTimeoutMs, 1, 600_000),
    recheckTimeoutMs: pol.int('recheck_timeout_ms', d.policy.recheckTimeoutMs, 1, 3_600_000),
    onReload: pol.string('on_reload', d.policy.onReload) as 'keep' | 'revoke',
    onReloadDeadlineMs: pol.int('on_reload_deadline_ms', d.policy.onReloadDeadlineMs, 0, 3_600_000),
    dmaFiles: pol.string('dma_files', d.policy.dmaFiles) as DmaFiles,
    dmaWithoutFd: pol.string('dma_without_fd', d.policy.dmaWithoutFd) as 'refuse' | 'relay',
  };
  if (policy.dmaWithoutFd !== 'refuse' && policy.dmaWithoutFd !== 'relay') {
    throw new ConfigError(
      'policy.dma_without_fd',
      `must be "refuse" or "relay" (got "${policy.dmaWithoutFd}")`,
    );
  }
  if (policy.dmaFiles !== 'memory' && policy.dmaFiles !== 'any') {
    throw new ConfigError('policy.dma_files', `must be "memory" or "any" (got "${policy.dmaFiles}")`);
  }
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
    generic,
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
  return resolveConfigPaths(parseConfig(text, path), path);
}

/**
 * The modules a config file names (device.driver, policy.module), relative to that file's directory, as an
 * operator reads the file: a relative policy.module used to resolve against the daemon's working directory.
 */
export function resolveConfigPaths(config: BrokerConfig, file: string): BrokerConfig {
  if (config.driverModule) config.driverModule = resolve(dirname(file), config.driverModule);
  if (config.policy.module) config.policy.module = resolve(dirname(file), config.policy.module);
  return config;
}
