// How long an admin command waits for the broker's answer, and what to say when that wait runs out. Most
// commands are answered at once (the default is for a loaded machine); an upgrade once the new broker took
// over or the old one rolled back; a reset once the recovery it starts (or joins) ends. That recovery can
// legitimately outlast any fixed wait (attempts, each with device deadlines, and backoff between them, all
// configured), so `devlease reset` asks the broker first how long it estimates it may take (op `recovery`,
// boundMs: src/broker/recovery.ts) and waits that long plus a margin: the estimate counts the deadlines it
// knows of, not every device wait, and a wait that runs out says the recovery may still be going on.
// `--timeout MS` overrides every default.

import { DevleaseError } from '../errors.js';

/** The wait of a command answered at once. */
export const DEFAULT_WAIT_MS = 10_000;
/** An upgrade's wait: its handover deadline with room to spare. */
export const UPGRADE_WAIT_MS = 60_000;
/** Past the broker's recovery estimate: the reply's way back on a loaded machine, and what it leaves out. */
export const RESET_MARGIN_MS = 5_000;
/** A reset's wait when the broker gives no estimate (a broker from before the `recovery` op). */
export const RESET_FALLBACK_WAIT_MS = 60_000;
/** The longest `--timeout` (and computed wait): 24 h. */
export const MAX_WAIT_MS = 86_400_000;

/** How long to wait, and why that long (for the message when it runs out). */
export interface AdminWait {
  ms: number;
  why: string;
}

/** The admin request's wait ran out: the broker's answer (and the outcome) is unknown, not a refusal. */
export class AdminNoAnswerError extends DevleaseError {
  constructor(
    readonly path: string,
    readonly waitedMs: number,
  ) {
    super('ETIMEDOUT', `no answer from ${path} in ${waitedMs} ms`);
    this.name = 'AdminNoAnswerError';
  }
}

/** `--timeout`'s value in ms, or a usage error naming the problem. */
export function parseTimeout(value: string): number | { error: string } {
  const ms = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(ms) || ms < 1 || ms > MAX_WAIT_MS)
    return {
      error: `--timeout must be a positive integer (ms) of at most ${MAX_WAIT_MS} (24 h), got '${value}'`,
    };
  return ms;
}

/**
 * The wait of `cmd` on the admin socket `path`: `timeoutMs` (--timeout) when given; for a reset, the broker's
 * recovery estimate (boundMs) plus RESET_MARGIN_MS, asked for with `ask` (an admin request; its own errors
 * propagate).
 */
export async function adminWait(
  cmd: string,
  timeoutMs: number | undefined,
  ask: (req: Record<string, unknown>, timeoutMs: number) => Promise<unknown>,
): Promise<AdminWait> {
  if (timeoutMs !== undefined) return { ms: timeoutMs, why: '--timeout' };
  if (cmd === 'upgrade') return { ms: UPGRADE_WAIT_MS, why: "an upgrade's default wait" };
  if (cmd !== 'reset') return { ms: DEFAULT_WAIT_MS, why: 'the default wait' };
  let bound: unknown;
  try {
    bound = ((await ask({ op: 'recovery' }, DEFAULT_WAIT_MS)) as { boundMs?: unknown } | null)?.boundMs;
  } catch (err) {
    if (err instanceof AdminNoAnswerError)
      throw new DevleaseError(
        'ETIMEDOUT',
        `${err.message} when asked how long its recovery may take: the reset was not asked for`,
      );
    if ((err as { code?: string }).code !== 'EINVAL') throw err; // EINVAL: "unknown op", an older broker
  }
  if (typeof bound !== 'number' || !Number.isSafeInteger(bound) || bound < 0)
    return { ms: RESET_FALLBACK_WAIT_MS, why: 'the broker does not say how long its recovery may take' };
  return {
    ms: Math.min(bound + RESET_MARGIN_MS, MAX_WAIT_MS),
    why: `the broker estimates its recovery takes at most ${bound} ms, plus ${RESET_MARGIN_MS} ms`,
  };
}

/**
 * What is known when the wait ran out: the request reached the broker, which goes on with it. `status`:
 * the command that shows how it ends, with the caller's admin socket.
 */
export function noAnswerMessage(cmd: string, wait: AdminWait, status: string): string {
  const waited = `no answer from the broker in ${wait.ms} ms (${wait.why})`;
  switch (cmd) {
    case 'reset':
      return (
        `${waited}: the broker may still be recovering the device; the reset goes on without this command. ` +
        `\`${status}\` shows how it ends: recovery.state 'recovering' while it runs (attempts, lastError), ` +
        `then 'idle' (the device is back) or 'failed' (it did not recover and keeps trying). ` +
        '--timeout MS waits longer.'
      );
    case 'upgrade':
      return (
        `${waited}: the upgrade may still be in progress. \`${status}\` shows which broker serves ` +
        '(pid, upgrades) once it has ended. --timeout MS waits longer.'
      );
    default:
      return `${waited}: the broker is busy or stuck; the request may still take effect. --timeout MS waits longer.`;
  }
}
