// Policy: every lease request and every map/unmap passes here with the
// caller's context. The declarative rules from the config run first (limits
// per uid/gid); an optional module's hooks run after, and a hook that throws
// or does not answer in time denies (a reload's recheck asks to be told of
// such a failure instead: PolicyHookError).

import { readlinkSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { readHead } from '../sys/read-head.js';
import { withTimeout } from '../util/with-timeout.js';
import { type BrokerConfig, ConfigError, FAIR_SHARE_DIVISOR, fairShare, type PolicyRule } from './config.js';

export interface CallerContext {
  pid: number;
  uid: number;
  gid: number;
  /** /proc/<pid>/exe at connect time (null if unreadable). */
  exe: string | null;
  /** The first cgroup line of /proc/<pid>/cgroup (null if unreadable). */
  cgroup: string | null;
  /** The lease this request belongs to, when there is one. */
  lease?: { id: string; kind: string };
}

// A lease request is the drivers' type (drivers may not import the broker); policy hooks see the same.
import type { LeaseRequest } from '../drivers/driver.js';

export type { LeaseRequest };

export interface MapRequest {
  op: 'map' | 'unmap';
  iova: bigint;
  size: bigint;
  read?: boolean;
  write?: boolean;
  /** Maps: without an fd, its device accesses relayed to the client by the broker (policy.dma_without_fd). */
  relayed?: boolean;
}

export type Verdict = { allow: true } | { allow: false; reason: string };

/** Usage counters of one identity, which the declarative limits are checked against. */
export interface Usage {
  leases: number;
  mappedBytes: bigint;
  mappings: number;
}

export interface PolicyModule {
  lease?(ctx: CallerContext, req: LeaseRequest): Verdict | Promise<Verdict>;
  map?(ctx: CallerContext, req: MapRequest): Verdict | Promise<Verdict>;
}

/**
 * The caller's context at connect time. exe and cgroup are null when unreadable (the process may be gone,
 * or belong to someone we cannot inspect).
 */
export function readCallerContext(pid: number, uid: number, gid: number): CallerContext {
  if (pid <= 0) return { pid, uid, gid, exe: null, cgroup: null };
  let exe: string | null = null;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    // gone, or not ours to inspect
  }
  return { pid, uid, gid, exe, cgroup: firstLine(`/proc/${pid}/cgroup`) };
}

/** A /proc file's first line holds in one read (a cgroup path is at most PATH_MAX). */
const procLine = Buffer.allocUnsafe(8192);

/** The first line of a /proc file (readHead: no fstat, no buffer of its own); null when unreadable. */
function firstLine(path: string): string | null {
  const n = readHead(path, procLine, (got) => procLine.subarray(0, got).includes(10));
  if (n === null) return null;
  const end = procLine.subarray(0, n).indexOf(10);
  return procLine.toString('utf8', 0, end >= 0 ? end : n);
}

/** A hook that threw, answered nonsense or not in time, when the caller asked to tell that from a denial. */
export class PolicyHookError extends Error {
  constructor(
    readonly hook: 'lease' | 'map',
    readonly problem: string,
  ) {
    super(`policy module ${hook}() failed: ${problem}`);
    this.name = 'PolicyHookError';
  }
}

export class Policy {
  readonly #rules: PolicyRule[];
  readonly #timeoutMs: number;
  readonly #loadTimeoutMs: number;
  #module: PolicyModule | null = null;
  readonly #log: (event: Record<string, unknown>) => void;

  constructor(config: BrokerConfig['policy'], log: (event: Record<string, unknown>) => void) {
    this.#rules = config.rules;
    this.#timeoutMs = config.hookTimeoutMs;
    this.#loadTimeoutMs = config.loadTimeoutMs;
    this.#log = log;
  }

  /**
   * The policy as configured, its module loaded (a failure named as a reload names it: the key, and why — a
   * syntax error, a missing export, no load in time); `code`: hooks given in code, in force over the module.
   */
  static async load(
    config: BrokerConfig['policy'],
    log: (event: Record<string, unknown>) => void,
    code: PolicyModule | null,
  ): Promise<Policy> {
    const policy = new Policy(config, log);
    if (config.module) {
      try {
        await policy.loadModule(config.module);
      } catch (err) {
        throw new ConfigError('policy.module', (err as Error).message);
      }
    }
    if (code) policy.setModule(code);
    return policy;
  }

  /**
   * Load the optional policy module (an ES module exporting `lease` and/or `map`). `version` (a reload's hash of
   * the file) makes a changed file import afresh: ES modules are cached by URL.
   *
   * Within policy.load_timeout_ms: a module whose top-level code awaits something that never settles left the
   * broker never ready, or a reload (and every reload and upgrade queued behind it) waiting for good. An
   * import() cannot be cancelled, so such a module's evaluation stays pending in memory, and a later import of
   * the same file (same sha256) waits on it again and is refused the same way.
   */
  async loadModule(path: string, version?: string): Promise<void> {
    const url = pathToFileURL(path).href + (version ? `?sha256=${version}` : '');
    const ms = this.#loadTimeoutMs;
    const mod = await withTimeout(
      import(url) as Promise<PolicyModule & { default?: PolicyModule }>,
      ms,
      () => `${path} did not load within ${ms} ms (policy.load_timeout_ms)`,
    );
    const hooks = mod.lease || mod.map ? mod : (mod.default ?? {});
    if (typeof hooks.lease !== 'function' && typeof hooks.map !== 'function') {
      throw new Error(`policy module ${path} exports neither lease(ctx, req) nor map(ctx, req)`);
    }
    this.#module = hooks;
  }

  /** Use hooks given in code (a TypeScript caller embedding the broker). */
  setModule(mod: PolicyModule | null): void {
    this.#module = mod;
  }

  ruleFor(ctx: CallerContext): PolicyRule | null {
    for (const r of this.#rules) {
      if (r.match.any) return r;
      if (r.match.uid !== undefined && r.match.uid === ctx.uid) return r;
      if (r.match.gid !== undefined && r.match.gid === ctx.gid) return r;
    }
    return null;
  }

  /**
   * `capacity`: how many leases of req.kind the device holds at once, which a 'fair' limit is a share of.
   * `strict`: a hook that fails throws a PolicyHookError rather than denying (a reload's recheck).
   */
  async checkLease(
    ctx: CallerContext,
    req: LeaseRequest,
    usage: Usage,
    capacity = 1,
    strict = false,
  ): Promise<Verdict> {
    const rule = this.ruleFor(ctx);
    if (!rule) return { allow: false, reason: `no policy rule matches uid ${ctx.uid} gid ${ctx.gid}` };
    if (!rule.kinds.includes('*') && !rule.kinds.includes(req.kind)) {
      return {
        allow: false,
        reason: `uid ${ctx.uid} may not lease kind '${req.kind}' (allowed: ${rule.kinds.join(', ')})`,
      };
    }
    const limit = rule.maxLeases === 'fair' ? fairShare(capacity) : rule.maxLeases;
    if (usage.leases + 1 > limit) {
      const fair =
        rule.maxLeases === 'fair'
          ? ` (a fair share: ${capacity} '${req.kind}' lease(s) / ${FAIR_SHARE_DIVISOR}, rounded up)`
          : '';
      return {
        allow: false,
        reason: `uid ${ctx.uid} already holds ${usage.leases} lease(s); the limit is ${limit}${fair}`,
      };
    }
    return this.#hook('lease', ctx, req, strict);
  }

  async checkMap(ctx: CallerContext, req: MapRequest, usage: Usage): Promise<Verdict> {
    if (req.op === 'map') {
      const rule = this.ruleFor(ctx);
      if (!rule) return { allow: false, reason: `no policy rule matches uid ${ctx.uid} gid ${ctx.gid}` };
      if (usage.mappings + 1 > rule.maxMappings) {
        return { allow: false, reason: `mapping limit reached: ${usage.mappings} of ${rule.maxMappings}` };
      }
      if (usage.mappedBytes + req.size > rule.maxMappedBytes) {
        return {
          allow: false,
          reason: `mapped-bytes limit: ${usage.mappedBytes} + ${req.size} would exceed ${rule.maxMappedBytes}`,
        };
      }
    }
    return this.#hook('map', ctx, req);
  }

  async #hook(
    name: 'lease' | 'map',
    ctx: CallerContext,
    req: LeaseRequest | MapRequest,
    strict = false,
  ): Promise<Verdict> {
    const fn = this.#module?.[name] as
      | ((c: CallerContext, r: unknown) => Verdict | Promise<Verdict>)
      | undefined;
    if (!fn) return { allow: true };
    try {
      const v = await withTimeout(
        // Frozen from an Object.assign copy: on Node 20 (V8 11.3) a frozen spread gets a new hidden class nearly
        // every call (docs/performance-history.md, issue 16, twenty-fourth pass §4).
        Promise.resolve().then(() => fn(Object.freeze(Object.assign({}, ctx)), req)),
        this.#timeoutMs,
        () => `timed out after ${this.#timeoutMs} ms`,
      );
      if (!v || typeof v !== 'object' || typeof v.allow !== 'boolean') {
        throw new Error('hook returned neither { allow: true } nor { allow: false, reason }');
      }
      if (!v.allow) return { allow: false, reason: `policy module: ${v.reason || 'denied'}` };
      return { allow: true };
    } catch (err) {
      this.#log({ event: 'policy-hook-failed', hook: name, pid: ctx.pid, error: (err as Error).message });
      if (strict) throw new PolicyHookError(name, (err as Error).message);
      return { allow: false, reason: `policy module ${name}() failed: ${(err as Error).message}` };
    }
  }
}
