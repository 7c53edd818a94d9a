// The fail-nth walk (after the kernel's iommufd fail_nth selftest): for
// n = 1, 1+stride, 1+2·stride, …, arm the native layer so its nth syscall
// from now fails with ENOMEM, run one operation, disarm, and judge: the
// operation either succeeded or ended in a clear error (an Error with a
// string `code`), within a deadline, with no uncaught exception; then undo
// its effects the ordinary way and check that nothing is left behind and the
// broker still serves a fresh lease. The walk of an operation ends at the
// first n the operation completes without reaching (every site walked).
import type { failNth as FailNth, failNthFired as FailNthFired } from '../../src/sys/fail-nth.js';

export interface Hooks {
  failNth: typeof FailNth;
  failNthFired: typeof FailNthFired;
}

/** One operation to walk: a state to start from, the operation, and the undo of both. */
export interface Operation<S> {
  name: string;
  /** Builds the starting state, unarmed (a lease, a mapping, …). */
  setup(): Promise<S>;
  /** The operation under test, armed. Resolves when all of its effects (both sides) are done. */
  run(state: S): Promise<void>;
  /** Undoes setup and run, unarmed, whatever point run reached (idempotent closes). */
  teardown(state: S): Promise<void>;
}

export interface Judge {
  /** Waits for everything to be back to the baseline; returns null or what differs. */
  leaks(): Promise<string | null>;
  /** A fresh lease works (a COPY through a queue); throws if not. */
  freshLeaseWorks(): Promise<void>;
  /** Uncaught exceptions and unhandled rejections since the last call. */
  crashes(): string[];
}

export interface WalkResult {
  name: string;
  /** Values of n tried. */
  tried: number;
  /** Sites: the largest n that hit a syscall (the operation makes this many armed calls or more). */
  sites: number;
  /** Tries that ended in success although a syscall failed (handled by a retry or a fallback). */
  absorbed: number;
  /** Tries that ended in a clear error, by code. */
  errors: Record<string, number>;
  /** Which native function failed, by name. */
  failedCalls: Record<string, number>;
  /** Problems: unclear errors, hangs, crashes, leaks, a broker no longer serving. */
  problems: string[];
  leaks: number;
}

export interface WalkLimits {
  /** First n tried (1 walks from the start; larger narrows a walk to the sites past it). */
  from: number;
  stride: number;
  /** Largest n tried; reaching it without a completion is itself a problem (the walk did not end). */
  max: number;
  /** Deadline for one armed run. */
  deadlineMs: number;
  /** Check that a fresh lease works after every try (true) or only after failures every `stride` … */
  freshEvery: number;
}

const deadline = <T>(p: Promise<T>, ms: number, what: string): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`HANG: ${what} did not end within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });

/** A clear error: an Error whose `code` is a non-empty string (DevleaseError, SysError, LeaseError, …). */
export function clearError(err: unknown): string | null {
  if (!(err instanceof Error)) return null;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && code.length > 0 ? code : null;
}

export async function walk<S>(
  op: Operation<S>,
  hooks: Hooks,
  judge: Judge,
  limits: WalkLimits,
  log: (line: string) => void,
): Promise<WalkResult> {
  const r: WalkResult = {
    name: op.name,
    tried: 0,
    sites: 0,
    absorbed: 0,
    errors: {},
    failedCalls: {},
    problems: [],
    leaks: 0,
  };
  let completed = false;
  for (let n = limits.from; n <= limits.max; n += limits.stride) {
    const state = await op.setup();
    hooks.failNth(n);
    let outcome: { ok: true } | { ok: false; err: unknown };
    try {
      await deadline(op.run(state), limits.deadlineMs, `${op.name} with syscall ${n} failing`);
      outcome = { ok: true };
    } catch (err) {
      outcome = { ok: false, err };
    }
    const fired = hooks.failNthFired();
    hooks.failNth(0);
    r.tried++;
    const seen = r.problems.length;
    const at = `${op.name} n=${n}${fired ? ` (${fired} failed)` : ''}`;
    if (fired) {
      r.sites = n;
      r.failedCalls[fired] = (r.failedCalls[fired] ?? 0) + 1;
    }
    if (outcome.ok) {
      if (fired) r.absorbed++;
    } else {
      const code = clearError(outcome.err);
      const msg = (outcome.err as Error)?.message ?? String(outcome.err);
      if (msg.startsWith('HANG:')) r.problems.push(`${at}: ${msg}`);
      else if (code === null) r.problems.push(`${at}: unclear error (no code): ${msg}`);
      else if (!fired)
        r.problems.push(`${at}: failed (${code}: ${msg}) although no syscall was made to fail`);
      else r.errors[code] = (r.errors[code] ?? 0) + 1;
    }
    try {
      await op.teardown(state);
    } catch (err) {
      r.problems.push(`${at}: teardown failed: ${(err as Error).message}`);
    }
    for (const c of judge.crashes()) r.problems.push(`${at}: CRASH ${c}`);
    const leak = await judge.leaks();
    if (leak) {
      r.leaks++;
      r.problems.push(`${at}: LEAK ${leak}`);
    }
    if (!fired || r.tried % limits.freshEvery === 0) {
      try {
        await deadline(judge.freshLeaseWorks(), limits.deadlineMs, 'a fresh lease');
      } catch (err) {
        r.problems.push(`${at}: afterwards a fresh lease does not work: ${(err as Error).message}`);
      }
      const leak2 = await judge.leaks();
      if (leak2) r.problems.push(`${at}: LEAK after the fresh lease: ${leak2}`);
    }
    for (const p of r.problems.slice(seen)) log(`fail-nth: ${p}`);
    if (r.problems.length > 20) {
      r.problems.push(`${op.name}: stopped after 20 problems`);
      break;
    }
    if (!fired) {
      if (!outcome.ok) break; // already a problem: failed with nothing injected
      completed = true;
      break;
    }
  }
  if (!completed && r.problems.length === 0)
    r.problems.push(`${op.name}: still failing at n=${limits.max} (FAIL_NTH_MAX): the walk did not end`);
  return r;
}
