// Policy and config reload without dropping leases (`devlease reload`,
// SIGHUP). The config file and the policy module are read again and
// validated in full before anything changes: a bad file, a module that does
// not load, or a change to what only a restart can apply (sockets, device,
// layout...) is refused with the reason, and the broker goes on as it was.
// A good one replaces the policy for every request from then on; the leases
// the new policy would refuse are kept or revoked with notice, as the new
// config's policy.on_reload says. Every grant and denial is audited with the
// sha256 of the config (and policy module) that decided it.
//
// A hook that fails (throws, answers nonsense or not in time) while the live leases are checked is not a
// refusal: it refuses the reload, which puts the old policy back, rather than revoking leases because a policy
// service is down. The whole check is bounded by the new file's policy.recheck_timeout_ms.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { DevleaseError } from '../errors.js';
import type { AuditLog } from './audit.js';
import { type BrokerConfig, ConfigError, parseConfig, resolveConfigPaths } from './config.js';
import type { LeaseTable } from './leases.js';
import { Policy, PolicyHookError, type PolicyModule, type Verdict } from './policy.js';

/** Which config decided: the sha256 of the config file's bytes, and of the policy module's when there is one. */
export interface ConfigIdentity {
  config: string;
  policyModule?: string;
}

export const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

/** The identity of a config as started: its file's hash, or of the empty text for the built-in defaults. */
export function configIdentity(file: string | null, config: BrokerConfig): ConfigIdentity {
  const id: ConfigIdentity = { config: sha256(file ? readFileSync(file) : '') };
  if (config.policy.module) id.policyModule = sha256(readFileSync(config.policy.module));
  return id;
}

/** Where the broker's config came from, and what the command line overrides in it. */
export interface ConfigSource {
  path: string;
  overrides?: Partial<Pick<BrokerConfig, 'rundir'>>;
}

export interface ReloadOutcome {
  config: ConfigIdentity;
  previous: ConfigIdentity;
  onReload: 'keep' | 'revoke';
  /** Leases the new policy would refuse, and what was done with each. */
  refused: { lease: string; pid: number; uid: number; reason: string; action: 'kept' | 'revoked' }[];
}

const stable = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));

/** The first section (other than [policy]) that differs: those take a restart. */
function restartOnlyChange(now: BrokerConfig, next: BrokerConfig): string | null {
  for (const key of Object.keys(now) as (keyof BrokerConfig)[]) {
    if (key === 'policy') continue;
    if (stable(now[key]) !== stable(next[key])) return key;
  }
  return null;
}

export interface ReloadTarget {
  config: BrokerConfig;
  leases: LeaseTable;
  audit: AuditLog;
  /** Hooks given in code at start: they stay in force over any module. */
  codeModule: PolicyModule | null;
  identity: ConfigIdentity;
  log(msg: string): void;
}

/** Read, validate and load everything; throws (changing nothing) naming what is wrong. */
async function prepare(source: ConfigSource, t: ReloadTarget) {
  let text: Buffer;
  try {
    text = readFileSync(source.path);
  } catch (err) {
    throw new ConfigError(
      '(file)',
      `cannot read ${source.path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
  const next = resolveConfigPaths(parseConfig(text.toString('utf8'), source.path), source.path);
  Object.assign(next, source.overrides ?? {});
  const changed = restartOnlyChange(t.config, next);
  if (changed) {
    throw new ConfigError(changed, 'changed, and only a restart applies it (a reload applies [policy])');
  }
  const identity: ConfigIdentity = { config: sha256(text) };
  const policy = new Policy(next.policy, (e) => t.audit.write({ event: 'policy', ...e }));
  if (next.policy.module) {
    let moduleText: Buffer;
    try {
      moduleText = readFileSync(next.policy.module);
    } catch (err) {
      throw new ConfigError(
        'policy.module',
        `cannot read ${next.policy.module}: ${(err as NodeJS.ErrnoException).code}`,
      );
    }
    identity.policyModule = sha256(moduleText);
    try {
      // The hash in the URL: the same file imports as the same module, a changed one afresh.
      await policy.loadModule(next.policy.module, identity.policyModule);
    } catch (err) {
      throw new ConfigError('policy.module', (err as Error).message);
    }
  }
  if (t.codeModule) policy.setModule(t.codeModule);
  return { next, policy, identity };
}

/** A reload refused, having changed nothing: audited and logged; the error to throw. */
export function refuseReload(
  source: ConfigSource,
  t: Pick<ReloadTarget, 'audit' | 'identity' | 'log'>,
  code: 'EINVAL' | 'EBUSY' | 'EAGAIN' | 'ETIMEDOUT',
  why: string,
  cause?: unknown,
): DevleaseError {
  t.audit.write({ event: 'reload-refused', path: source.path, error: why, config: t.identity.config });
  t.log(`reload of ${source.path} refused, nothing changed: ${why}`);
  return new DevleaseError(code, `reload refused, nothing changed: ${why}`, { reason: why, cause });
}

/**
 * Reload from `source`. Resolves with what was applied; rejects with EINVAL (and the reason) when the new
 * config is refused, having changed nothing. Both outcomes are audited and logged.
 */
export async function reload(source: ConfigSource, t: ReloadTarget): Promise<ReloadOutcome> {
  let prepared: Awaited<ReturnType<typeof prepare>>;
  try {
    prepared = await prepare(source, t);
  } catch (err) {
    throw refuseReload(source, t, 'EINVAL', (err as Error).message, err);
  }
  const { next, policy, identity } = prepared;
  const previous = { ...t.identity };
  const old = { config: t.config.policy, policy: t.leases.policy };
  const swap = (config: BrokerConfig['policy'], p: Policy, id: ConfigIdentity) => {
    t.config.policy = config;
    t.leases.policy = p;
    // In place: the audit log stamps grants and denials with this very object.
    for (const k of Object.keys(t.identity) as (keyof ConfigIdentity)[]) delete t.identity[k];
    Object.assign(t.identity, id);
  };
  swap(next.policy, policy, identity);

  let refused: Awaited<ReturnType<typeof recheck>>;
  try {
    // Grants that passed the old policy and are still being programmed are in the table once these end.
    await t.leases.grantsSettled();
    refused = await recheck(t.leases, policy, next.policy.recheckTimeoutMs);
  } catch (err) {
    // Requests decided since the swap were decided by the new policy (their records say so); from now on the
    // old one decides again, and no lease was revoked.
    swap(old.config, old.policy, previous);
    const code = err instanceof RecheckError ? err.code : 'EINVAL';
    throw refuseReload(source, t, code, (err as Error).message, err);
  }
  const onReload = next.policy.onReload;
  const outcome: ReloadOutcome = { config: identity, previous, onReload, refused: [] };
  for (const r of refused) {
    const action = onReload === 'revoke' ? 'revoked' : 'kept';
    if (action === 'revoked') {
      // Not there any more: it ended while the policy's hook ran for the leases after it.
      if (!t.leases.get(r.lease)) continue;
      t.leases.revoke(r.lease, next.policy.onReloadDeadlineMs, `the reloaded policy refuses it: ${r.reason}`);
    } else {
      t.audit.write({ event: 'reload-kept', lease: r.lease, pid: r.pid, uid: r.uid, reason: r.reason });
    }
    outcome.refused.push({ ...r, action });
  }
  t.audit.write({ event: 'reload', path: source.path, ...outcome });
  t.log(
    `reloaded ${source.path} (sha256 ${identity.config.slice(0, 12)}): ${refused.length} lease(s) the new ` +
      `policy refuses, ${onReload === 'revoke' ? 'revoked' : 'kept'}`,
  );
  return outcome;
}

/** Why a recheck could not say which leases the new policy refuses: the reload is refused with `code`. */
class RecheckError extends Error {
  constructor(
    readonly code: 'EAGAIN' | 'ETIMEDOUT',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The live leases the new policy would refuse now, in grant order: each is checked as a new request would
 * be, counting the leases of its uid that were kept before it (so with a tighter limit the oldest stay).
 * Throws a RecheckError when a hook fails or the whole check takes longer than `timeoutMs`: one at a time
 * (each count depends on the verdicts before it), each up to hook_timeout_ms, it was unbounded in all.
 */
async function recheck(leases: LeaseTable, policy: Policy, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  const kept = new Map<number, number>();
  const refused: { lease: string; pid: number; uid: number; reason: string }[] = [];
  const live = leases.all().filter((l) => l.state === 'active');
  for (const [i, l] of live.entries()) {
    if (l.state !== 'active') continue; // it ended while the hook ran for the leases before it
    const usage = { leases: kept.get(l.ctx.uid) ?? 0, mappedBytes: 0n, mappings: 0 };
    const capacity = leases.driver.capacity?.(l.request.kind) ?? 1;
    const who = `lease ${l.id} (pid ${l.ctx.pid}, uid ${l.ctx.uid})`;
    let timer: NodeJS.Timeout | undefined;
    let v: Verdict;
    try {
      v = await Promise.race([
        policy.checkLease(l.ctx, l.request, usage, capacity, true),
        new Promise<never>((_, reject) => {
          const overdue = () =>
            reject(
              new RecheckError(
                'ETIMEDOUT',
                `checking the live leases against the new policy took longer than policy.recheck_timeout_ms ` +
                  `(${timeoutMs} ms), at ${who} (${i + 1} of ${live.length})`,
              ),
            );
          timer = setTimeout(overdue, Math.max(0, deadline - Date.now()));
        }),
      ]);
    } catch (err) {
      if (!(err instanceof PolicyHookError)) throw err;
      throw new RecheckError(
        'EAGAIN',
        `the new policy could not be asked about ${who}: ${err.message} ` +
          '(a failed hook is not a refusal: no lease is revoked for it)',
      );
    } finally {
      clearTimeout(timer);
    }
    if (v.allow) kept.set(l.ctx.uid, usage.leases + 1);
    else refused.push({ lease: l.id, pid: l.ctx.pid, uid: l.ctx.uid, reason: v.reason });
  }
  return refused;
}
