// Device recoveries run one at a time: a second `devlease reset`, or a hang,
// arriving during one joins it instead of racing it (two resets loaded the
// firmware at one IOVA: EEXIST; a reset racing a hang ended recovery-failed).
// A failed attempt is retried with backoff, and `devlease status` shows it.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, afterEach, test } from 'node:test';
import { type RecoveryStatus, recoveryBoundMs } from '../../src/broker/recovery.js';
import { adminRequest } from '../../src/cli/admin.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig | null = null;
let clients: ClientProc[] = [];
const spawnClient = async (): Promise<ClientProc> => {
  const c = await ClientProc.spawn();
  clients.push(c);
  return c;
};
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
  await rig?.close();
  rig = null;
});

// A reset's answer comes when the recovery ends: attempts (1 s each when stuck) plus backoff, stretched by a
// loaded machine well past 10 s (the CLI waits for the broker's recovery bound). Its deadline here is generous;
// the test asserts order, not time.
const admin = (r: Rig, req: Record<string, unknown>, timeoutMs = req.op === 'reset' ? 60_000 : 10_000) =>
  adminRequest(join(r.broker.dir, 'admin.sock'), req, timeoutMs) as Promise<{ recovery: RecoveryStatus }>;
const settled = <T>(p: Promise<T>) =>
  p.then(
    (value) => ({ ok: true as const, value }),
    (error: Error & { code?: string }) => ({ ok: false as const, error }),
  );

/** A lease works end to end: granted, and a NOP completes OK. */
async function leaseWorks(r: Rig): Promise<void> {
  const c = await spawnClient();
  await c.call('connect', { socket: r.socket });
  await c.call('queue');
  assert.equal((await c.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
  await c.exit();
}

test('two concurrent devlease reset: one recovery, both answered OK, leasing works after', async () => {
  rig = await startRig({ sim: { numQueues: 2 } });
  const a = await spawnClient();
  await a.call('connect', { socket: rig.socket });
  const results = await Promise.all([1, 2, 3].map(() => settled(admin(rig!, { op: 'reset' }))));
  for (const r of results)
    assert.ok(r.ok, `a reset failed: ${r.ok ? '' : `${r.error.code} ${r.error.message}`}`);
  assert.equal(rig.audit.filter((e) => e.event === 'owner-reset').length, 1, 'one recovery ran');
  assert.equal(rig.audit.filter((e) => e.event === 'device-recovered').length, 1);
  assert.ok(!rig.audit.some((e) => e.event === 'recovery-failed'));
  const status = await admin(rig, { op: 'status' });
  assert.equal(status.recovery.state, 'idle');
  assert.equal(status.recovery.cause, 'owner-reset');
  assert.equal(status.recovery.joined, 2, 'the other two joined it');
  assert.equal(rig.broker.leases.all().length, 0, "the client's lease was reclaimed");
  await leaseWorks(rig);
});

// A kernel device reports an AER error of itself through its ERR irq ('error-reported'; the guest test
// test/kernel/guest/aer.test.ts has QEMU raise one): its state can no longer be trusted. Here the simulator's device
// object emits it, to check what the broker does with it on a device that can say what a recovery did.
test('an error the device reports (AER): one recovery, the client told, its lease reclaimed, leasing works after', async () => {
  rig = await startRig({ sim: { numQueues: 2 } });
  const a = await spawnClient();
  await a.call('connect', { socket: rig.socket });
  const recovered = new Promise<void>((resolve) => rig!.broker.once('recovered', resolve));
  const heard = new Promise<string>((resolve) => rig!.broker.once('device-error', resolve));
  rig.broker.device.emit('error-reported', 'an uncorrectable PCIe error');
  assert.equal(await heard, 'an uncorrectable PCIe error');
  await recovered;
  assert.deepEqual(
    rig.audit.filter((e) => e.event === 'device-error').map((e) => e.reason),
    ['an uncorrectable PCIe error'],
  );
  assert.ok(
    rig.audit.some((e) => e.event === 'reclaim' && /^device-error: /.test(e.reason)),
    "the client's lease was reclaimed for the error",
  );
  assert.equal((await admin(rig, { op: 'status' })).recovery.cause, 'device-error');
  assert.equal(rig.broker.leases.all().length, 0);
  await leaseWorks(rig);
});

test('a reset racing a hang: both end in one recovered device, not recovery-failed', async () => {
  rig = await startRig({ sim: { numQueues: 2 }, config: { sa1: { heartbeat_ms: 20 } } });
  const a = await spawnClient();
  await a.call('connect', { socket: rig.socket });
  const hang = rig.sim.inject({ kind: 'hang' });
  const reset = settled(admin(rig, { op: 'reset' }));
  await hang;
  const r = await reset;
  assert.ok(r.ok, `the reset failed: ${r.ok ? '' : `${r.error.code} ${r.error.message}`}`);
  // The hang may be noticed during the reset (it joins) or only after it (a recovery of its own): either way
  // the device comes back.
  await until(
    'no recovery to be running',
    async () => (await admin(rig!, { op: 'status' })).recovery.state === 'idle',
  );
  assert.ok(!rig.audit.some((e) => e.event === 'recovery-failed'), 'no recovery failed');
  await leaseWorks(rig);
});

test('a failed recovery attempt is retried with backoff, visible in status, and then succeeds', async () => {
  rig = await startRig({
    sim: { numQueues: 2 },
    // A backoff long enough that the test clears the injection (after spawning a client) before the retry.
    config: { device: { recovery_attempts: 5, recovery_backoff_ms: 3000, recovery_backoff_max_ms: 3000 } },
  });
  // Spawned before the reset: only its connect (one request) falls between the first attempt and the retry.
  const late = await spawnClient();
  await rig.sim.inject({ kind: 'stuckReset' }); // CONTROL.RESET never finishes: an attempt times out (1 s)
  const reset = settled(admin(rig, { op: 'reset' }));
  let seen = {} as RecoveryStatus;
  await until(
    'a retry to be scheduled',
    async () => {
      seen = (await admin(rig!, { op: 'status' })).recovery;
      return seen.nextAttemptAt !== null;
    },
    20_000,
  );
  assert.equal(seen.state, 'recovering');
  assert.equal(seen.attempts, 1);
  assert.match(seen.lastError ?? '', /ETIMEDOUT: sa1: device reset \(CONTROL.RESET\) did not finish/);
  const refused = await late.call('connect', { socket: rig!.socket }).catch((e) => e);
  assert.equal(refused.code, 'EAGAIN', 'no lease while recovering');
  await rig.sim.inject({ kind: 'stuckReset', clear: true });
  const r = await reset;
  assert.ok(r.ok, `the reset failed: ${r.ok ? '' : `${r.error.code} ${r.error.message}`}`);
  // Normally one failed attempt; a machine loaded past the 3 s backoff may fail a second one before the
  // injection is cleared. Either way: attempts numbered in order, then one that succeeds.
  const failed = rig.audit.filter((e) => e.event === 'recovery-attempt-failed').map((e) => e.attempt);
  assert.ok(failed.length >= 1, 'the stuck attempt failed');
  assert.deepEqual(
    failed,
    failed.map((_, i) => i + 1),
  );
  assert.equal(rig.audit.find((e) => e.event === 'device-recovered')?.attempts, failed.length + 1);
  const status = (await admin(rig, { op: 'status' })).recovery;
  assert.equal(status.state, 'idle');
  assert.equal(status.attempts, failed.length + 1);
  await leaseWorks(rig);
});

test('a hang during the recovery’s firmware load: retried until the device is back, no operator needed', async () => {
  rig = await startRig({
    sim: { numQueues: 2 },
    config: {
      sa1: { heartbeat_ms: 20 },
      device: { recovery_attempts: 2, recovery_backoff_ms: 100, recovery_backoff_max_ms: 300 },
    },
  });
  const a = await spawnClient();
  await a.call('connect', { socket: rig.socket });
  // The next three firmware loads hang the device: the recovery of the hang below hangs twice more than its
  // `recovery_attempts` allow, and the fourth attempt loads.
  await rig.sim.inject({ kind: 'hang', on: 'firmware-load', count: 3 });
  await rig.sim.inject({ kind: 'hang' });
  let seen = {} as RecoveryStatus;
  await until(
    'the recovery to be reported failed (and to go on trying)',
    async () => {
      seen = (await admin(rig!, { op: 'status' })).recovery;
      return seen.state === 'failed' || rig!.audit.some((e) => e.event === 'recovery-failed');
    },
    30_000,
  );
  assert.match(
    rig.audit.find((e) => e.event === 'recovery-failed')?.error ?? '',
    /the device hung during the firmware load/,
    'the second hang is not dropped: it fails the attempt, by name',
  );
  await until(
    'the device to be back without an operator',
    async () => {
      seen = (await admin(rig!, { op: 'status' })).recovery;
      return seen.state === 'idle';
    },
    30_000,
  );
  assert.equal(seen.cause, 'device-hang');
  assert.equal(seen.attempts, 4, 'three attempts hung in the firmware load, the fourth succeeded');
  assert.deepEqual(
    rig.audit.filter((e) => e.event === 'recovery-attempt-failed').map((e) => e.attempt),
    [1, 2, 3],
  );
  assert.equal(rig.audit.find((e) => e.event === 'device-recovered')?.attempts, 4);
  assert.equal(rig.broker.leases.all().length, 0, "the client's lease was reclaimed");
  await leaseWorks(rig);
});

test('the recovery estimate steps through the same backoff as the loop: doubling from backoffMs, capped at backoffMaxMs', () => {
  const d = { prepareMs: 1000, attemptMs: 300 };
  // 4 attempts, 3 waits between them: 100, 200, then 400 capped at 250.
  assert.equal(recoveryBoundMs({ attempts: 4, backoffMs: 100, backoffMaxMs: 250 }, d), 1000 + 4 * 300 + 550);
  // One attempt: no wait at all.
  assert.equal(recoveryBoundMs({ attempts: 1, backoffMs: 100, backoffMaxMs: 250 }, d), 1300);
});

test("a 'recovered' listener that throws: the recovery still ends, the reset is answered, grants resume, status names it", async () => {
  rig = await startRig({ sim: { numQueues: 2 } });
  let thrown = 0;
  rig.broker.on('recovered', () => {
    thrown++;
    throw new Error('a recovered listener bug');
  });
  const first = await settled(admin(rig, { op: 'reset' }));
  assert.ok(first.ok, `the reset is answered (${first.ok ? '' : first.error.message})`);
  assert.equal(thrown, 1);
  const status = await admin(rig, { op: 'status' });
  assert.equal(status.recovery.state, 'idle');
  assert.match(status.recovery.lastError ?? '', /^reporting: a recovered listener bug/);
  assert.equal(rig.broker.leases.suspended, null, 'grants are not left suspended');
  await leaseWorks(rig);
  // The loop is not left running: a second reset runs a recovery of its own.
  const second = await settled(admin(rig, { op: 'reset' }));
  assert.ok(second.ok);
  assert.equal(thrown, 2);
  assert.equal(rig.audit.filter((e) => e.event === 'device-recovered').length, 2);
});
