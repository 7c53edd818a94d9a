// `devlease reset` waits as long as the recovery it asks for may take (the broker's estimate from its deadlines)
// not a fixed 10 s; `--timeout MS` overrides any admin command's wait; and a wait that runs out says the
// broker may still be recovering (and how to check) instead of a bare ETIMEDOUT. Real broker, real simulator,
// the real CLI as a child process; a slow recovery is a stuck CONTROL.RESET (each attempt times out at 1 s).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, afterEach, test } from 'node:test';
import type { RecoveryStatus } from '../../src/broker/recovery.js';
import { adminRequest } from '../../src/cli/admin.js';
import { adminWait, DEFAULT_WAIT_MS, RESET_MARGIN_MS } from '../../src/cli/admin-wait.js';
import { RECOVER_WAITS_MS } from '../../src/drivers/sa1/health.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig | null = null;
afterEach(async () => {
  await rig?.close();
  rig = null;
});

const adminPath = (r: Rig) => join(r.broker.dir, 'admin.sock');
const recovery = async (r: Rig) =>
  ((await adminRequest(adminPath(r), { op: 'status' })) as { recovery: RecoveryStatus }).recovery;

/** The CLI as an operator runs it; the broker runs in this process, so the child is awaited, never synced. */
function cli(args: string[], limitMs = 60_000): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [DEVLEASE_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const limit = setTimeout(() => child.kill('SIGKILL'), limitMs);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(limit);
      resolve({ code, out, err });
    }),
  );
}

test('--timeout must be a positive integer of at most 24 h: anything else is a usage error (exit 2)', () => {
  for (const cmd of ['status', 'reset', 'upgrade']) {
    for (const bad of ['0', '1.5', 'soon', '1e3', '86400001', '']) {
      const r = spawnSync(
        process.execPath,
        [DEVLEASE_BIN, cmd, `--timeout=${bad}`, '--admin', '/nonexistent/admin.sock'],
        { encoding: 'utf8', timeout: 30_000 },
      );
      assert.equal(r.status, 2, `${cmd} --timeout=${bad}: exit ${r.status}, stderr: ${r.stderr}`);
      assert.match(r.stderr, /--timeout must be a positive integer \(ms\) of at most 86400000/);
      assert.ok(r.stderr.includes(`got '${bad}'`), `${cmd} --timeout=${bad}: names the value: ${r.stderr}`);
    }
  }
  const help = spawnSync(process.execPath, [DEVLEASE_BIN, 'reset', '--help'], { encoding: 'utf8' });
  assert.match(help.stdout, /--timeout MS/);
});

test("the reset's wait follows the broker's recovery estimate from the configured deadlines, past 10 s", async () => {
  // Backoff between 4 attempts: 1000 + 1500 + 1500 ms. The reclaim: the policy hook's 200 ms, 2 × the
  // quiesce's 500 ms, one device request's 5 s; each attempt the driver's waits and one device request.
  const long = { recovery_attempts: 4, recovery_backoff_ms: 1000, recovery_backoff_max_ms: 1500 };
  rig = await startRig({ sim: { numQueues: 2 }, config: { device: long } });
  const ask = (req: Record<string, unknown>, ms: number) => adminRequest(adminPath(rig!), req, ms);
  const big = (await recovery(rig)).boundMs;
  assert.equal(big, 200 + 2 * 500 + 5000 + 4 * (RECOVER_WAITS_MS + 5000) + 4000, 'the defaults, 4 attempts');
  const wait = await adminWait('reset', undefined, ask);
  assert.equal(wait.ms, big + RESET_MARGIN_MS, 'the CLI waits for the estimate plus its margin');
  assert.ok(wait.ms > DEFAULT_WAIT_MS);
  assert.deepEqual(await adminWait('reset', 1234, ask), { ms: 1234, why: '--timeout' });
  assert.equal((await adminWait('status', undefined, ask)).ms, DEFAULT_WAIT_MS, 'others keep theirs');
  await rig.close();

  // One attempt, no backoff; a slower policy hook and quiesce, and a device opened with 8 s request deadlines.
  rig = await startRig({
    sim: { numQueues: 2 },
    deviceTimeoutMs: 8000,
    config: {
      device: { recovery_attempts: 1 },
      policy: { hook_timeout_ms: 2500 },
      lifetime: { quiesce_timeout_ms: 700 },
    },
  });
  const small = (await recovery(rig)).boundMs;
  assert.equal(
    small,
    2500 + 2 * 700 + 8000 + (RECOVER_WAITS_MS + 8000),
    'what this broker was configured with',
  );
  assert.equal((await adminWait('reset', undefined, ask)).ms, small + RESET_MARGIN_MS);
});

test('a --timeout shorter than the recovery: exit 1 saying it may still be recovering; status shows it end', async () => {
  rig = await startRig({
    sim: { numQueues: 2 },
    config: { device: { recovery_attempts: 10, recovery_backoff_ms: 200, recovery_backoff_max_ms: 200 } },
  });
  const admin = adminPath(rig);
  await rig.sim.inject({ kind: 'stuckReset' }); // CONTROL.RESET never finishes: every attempt fails at 1 s
  const r = await cli(['reset', '--admin', admin, '--timeout', '300']);
  assert.equal(r.code, 1, `exit ${r.code}: ${r.err}`);
  assert.match(r.err, /no answer from the broker in 300 ms \(--timeout\)/);
  assert.match(r.err, /the broker may still be recovering the device/);
  assert.ok(r.err.includes(`devlease status --admin ${admin}`), r.err);
  assert.doesNotMatch(r.err, /^devlease reset: ETIMEDOUT|no answer from \//);

  const during = await cli(['status', '--admin', admin, '--json']);
  assert.equal(during.code, 0, during.err);
  assert.equal(JSON.parse(during.out).recovery.state, 'recovering', 'the reset went on without the CLI');
  await until('a stuck attempt to fail', async () => (await recovery(rig!)).lastError !== null, 20_000);
  await rig.sim.inject({ kind: 'stuckReset', clear: true });
  await until('the recovery to end', async () => (await recovery(rig!)).state === 'idle', 30_000);
  const end = await cli(['status', '--admin', admin, '--json']);
  const rec = JSON.parse(end.out).recovery as RecoveryStatus;
  assert.equal(rec.cause, 'owner-reset');
  assert.ok(rec.attempts >= 2, `a stuck attempt failed first, then one succeeded: ${rec.attempts}`);
  assert.equal(rig.audit.filter((e) => e.event === 'device-recovered').length, 1, 'the device is back');
});

test('with the default wait the reset outlasts the old fixed 10 s: a failed attempt, its retry 10.5 s later, success', async () => {
  // The first attempt fails at 1 s (a stuck CONTROL.RESET); the retry comes 10.5 s later and, the injection
  // cleared by then, succeeds at ~11.5 s: a CLI waiting a fixed 10 s (or anything but the broker's estimate)
  // gives up before the answer.
  const retryLate = { recovery_attempts: 2, recovery_backoff_ms: 10_500, recovery_backoff_max_ms: 10_500 };
  rig = await startRig({ sim: { numQueues: 2 }, config: { device: retryLate } });
  await rig.sim.inject({ kind: 'stuckReset' });
  const reset = cli(['reset', '--admin', adminPath(rig)]);
  await until('a failed attempt', async () => (await recovery(rig!)).nextAttemptAt !== null, 20_000);
  const failed = await recovery(rig);
  assert.ok(
    Date.parse(failed.nextAttemptAt!) - Date.parse(failed.since!) > DEFAULT_WAIT_MS,
    `the retry is due past the old fixed wait: ${JSON.stringify(failed)}`,
  );
  await rig.sim.inject({ kind: 'stuckReset', clear: true });
  const r = await reset;
  assert.equal(r.code, 0, `exit ${r.code}: ${r.err}`);
  assert.equal(r.err, '');
  assert.deepEqual(JSON.parse(r.out), { reset: true }, 'the success output');
  const rec = await recovery(rig);
  assert.equal(rec.state, 'idle');
  assert.equal(rec.attempts, 2, 'one failed attempt, then the retry that succeeded');
});

test('a recovery that failed (its last attempt timed out on the device) is a failure, not "may still be recovering"', async () => {
  rig = await startRig({ sim: { numQueues: 2 }, config: { device: { recovery_attempts: 1 } } });
  await rig.sim.inject({ kind: 'stuckReset' });
  const r = await cli(['reset', '--admin', adminPath(rig)]);
  assert.equal(r.code, 1, `exit ${r.code}: ${r.err}`);
  assert.match(r.err, /the device did not recover: .*device reset \(CONTROL.RESET\) did not finish/);
  assert.doesNotMatch(r.err, /may still be recovering/);
  await rig.sim.inject({ kind: 'stuckReset', clear: true });
});
