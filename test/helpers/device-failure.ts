// Device-failure scenarios, shared by the broker tests (one run each, in
// `npm test`) and the device-failure suite (npm run test:device-failure:
// several rounds, detection and recovery times printed). Each starts from a
// working rig with one client holding a queue lease, makes the device fail,
// and returns once the failure was detected (the client told, its lease gone)
// and the device is back (a new lease completes a NOP). Times are measured,
// never asserted: the machine may be loaded.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { RecoveryStatus } from '../../src/broker/recovery.js';
import { adminRequest } from '../../src/cli/admin.js';
import { spawnSimulator } from '../../src/sim/index.js';
import { ClientProc, type Rig, until } from './broker-rig.js';

export interface FailureTimes {
  /** From the failure to the broker noticing it (its audit event), ms. */
  detectMs: number;
  /** From the device being able to work again (the failure's end) to a new lease completing a NOP, ms. */
  recoverMs: number;
}

/** Generous bounds for a loaded machine: a wait that runs out fails, naming what it waited for. */
const DETECT_BOUND_MS = 30_000;
const RECOVER_BOUND_MS = 60_000;

export const admin = (r: Rig, req: Record<string, unknown>) =>
  adminRequest(join(r.broker.dir, 'admin.sock'), req) as Promise<{ recovery: RecoveryStatus }>;

/** The time the first audit event `event` (after index `from`) shows up, waiting for it. */
async function auditEvent(r: Rig, event: string, from: number, what: string, bound: number): Promise<number> {
  await until(what, () => r.audit.slice(from).some((e) => e.event === event), bound);
  return performance.now();
}

/** A client holding a queue lease, whose NOP completes. */
export async function leasedClient(r: Rig): Promise<ClientProc> {
  const c = await ClientProc.spawn();
  try {
    await c.call('connect', { socket: r.socket });
    await c.call('queue');
    assert.equal((await c.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
  } catch (err) {
    await c.kill();
    throw err;
  }
  return c;
}

/** A new lease works end to end (granted, a NOP completes OK); retried while the broker still refuses. */
export async function leaseWorks(r: Rig): Promise<void> {
  let last: unknown = null;
  await until(
    'a new lease to be granted and complete a NOP',
    async () => {
      try {
        const c = await leasedClient(r);
        await c.exit();
        return true;
      } catch (err) {
        last = err;
        const code = (err as { code?: string }).code;
        if (code === 'EAGAIN' || code === 'ENODEV') return false; // recovering / reconnecting: not yet
        throw err;
      }
    },
    RECOVER_BOUND_MS,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (last refusal: ${(last as Error | null)?.message ?? 'none'})`);
  });
}

/** The client was told (ERR notice or its session ended) and its lease is gone from the broker. */
async function clientTold(r: Rig, c: ClientProc): Promise<void> {
  await until(
    "the client's notice",
    async () => {
      const ev: string[] = await c.call('events');
      return ev.includes('device-reset') || ev.includes('disconnected');
    },
    DETECT_BOUND_MS,
  );
  await until("the client's lease to end", () => r.broker.leases.all().length === 0, RECOVER_BOUND_MS);
}

/** Injected hang: heartbeat (or ERR) detection, recovery, leasing again. */
export async function hang(r: Rig): Promise<FailureTimes> {
  const c = await leasedClient(r);
  const from = r.audit.length;
  const t0 = performance.now();
  await r.sim.inject({ kind: 'hang' });
  const detected = await auditEvent(r, 'device-hang', from, 'the hang to be detected', DETECT_BOUND_MS);
  await clientTold(r, c);
  await auditEvent(r, 'device-recovered', from, 'the device to recover', RECOVER_BOUND_MS);
  await leaseWorks(r);
  const done = performance.now();
  await c.kill();
  return { detectMs: detected - t0, recoverMs: done - t0 };
}

/**
 * The simulator process frozen (SIGSTOP) for `frozenMs`: the broker finds it unresponsive, ends the lease,
 * and reconnects once it runs again (SIGCONT). recoverMs counts from SIGCONT.
 */
export async function frozen(r: Rig, frozenMs = 3000): Promise<FailureTimes & { refusedCode: string }> {
  const c = await leasedClient(r);
  const from = r.audit.length;
  const t0 = performance.now();
  r.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
  let thawed = false;
  const thaw = () => {
    if (!thawed) r.sim.process.kill('SIGCONT');
    thawed = true;
  };
  try {
    const detected = await auditEvent(
      r,
      'device-unresponsive',
      from,
      'the frozen device to be found unresponsive',
      DETECT_BOUND_MS,
    );
    await clientTold(r, c);
    // While frozen, a new lease is refused at once with the reason, not after a timeout.
    const b = await ClientProc.spawn();
    const refused = await b.call('connect', { socket: r.socket }).then(
      () => ({ code: 'granted' }),
      (e: { code?: string }) => ({ code: e.code ?? 'unknown' }),
    );
    await b.kill();
    const left = frozenMs - (performance.now() - t0);
    if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
    const t1 = performance.now();
    thaw();
    await auditEvent(r, 'device-back', from, 'the device to be reconnected', RECOVER_BOUND_MS);
    await leaseWorks(r);
    const done = performance.now();
    return { detectMs: detected - t0, recoverMs: done - t1, refusedCode: refused.code };
  } finally {
    thaw();
    await c.kill();
  }
}

/** The device hangs, and hangs again in the recovery's firmware loads (`loads` times). */
export async function hangDuringRecovery(r: Rig, loads = 2): Promise<FailureTimes> {
  const c = await leasedClient(r);
  const from = r.audit.length;
  await r.sim.inject({ kind: 'hang', on: 'firmware-load', count: loads });
  const t0 = performance.now();
  await r.sim.inject({ kind: 'hang' });
  const detected = await auditEvent(r, 'device-hang', from, 'the hang to be detected', DETECT_BOUND_MS);
  await clientTold(r, c);
  await auditEvent(r, 'device-recovered', from, 'the device to recover', RECOVER_BOUND_MS);
  const recovered = r.audit.slice(from).find((e) => e.event === 'device-recovered');
  assert.equal(recovered?.attempts, loads + 1, 'each hung firmware load failed one attempt');
  await leaseWorks(r);
  const done = performance.now();
  await c.kill();
  return { detectMs: detected - t0, recoverMs: done - t0 };
}

/** `n` concurrent `devlease reset`: one recovery, every request answered OK. */
export async function concurrentResets(r: Rig, n = 3): Promise<FailureTimes> {
  const c = await leasedClient(r);
  const from = r.audit.length;
  const t0 = performance.now();
  const answers = await Promise.allSettled(Array.from({ length: n }, () => admin(r, { op: 'reset' })));
  for (const a of answers)
    assert.equal(a.status, 'fulfilled', `a reset failed: ${String((a as PromiseRejectedResult).reason)}`);
  assert.equal(r.audit.slice(from).filter((e) => e.event === 'owner-reset').length, 1, 'one recovery ran');
  await clientTold(r, c);
  await leaseWorks(r);
  const done = performance.now();
  await c.kill();
  return { detectMs: 0, recoverMs: done - t0 };
}

/**
 * The simulator process SIGKILLed, then started again on the same socket after `downMs`: the broker sees
 * the connection go, ends the lease without the device, and reconnects. recoverMs counts from the restart.
 */
export async function processKilled(r: Rig, numQueues: number, downMs = 500): Promise<FailureTimes> {
  const c = await leasedClient(r);
  const from = r.audit.length;
  const t0 = performance.now();
  const old = r.sim;
  old.process.kill('SIGKILL');
  const detected = await auditEvent(r, 'device-gone', from, 'the lost device to be noticed', DETECT_BOUND_MS);
  await old.close(); // already dead: closes its pipes
  await clientTold(r, c);
  await new Promise((resolve) => setTimeout(resolve, downMs));
  const t1 = performance.now();
  r.sim = await spawnSimulator({ socketPath: r.simSocket, numQueues });
  await auditEvent(r, 'device-back', from, 'the device to be reconnected', RECOVER_BOUND_MS);
  await leaseWorks(r);
  const done = performance.now();
  await c.kill();
  return { detectMs: detected - t0, recoverMs: done - t1 };
}
