// Revoke deadlines past setTimeout's range (2^31 ms, 24.8 days) used to fire
// at once — the lease reclaimed while its info region showed a deadline weeks
// away. The edge refuses deadlines over 24 h naming the field (admin request,
// CLI, LeaseTable.revoke), and the timer behind a deadline re-arms in chunks,
// so no delay fires early.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MAX_REVOKE_DEADLINE_MS } from '../../src/broker/lease.js';
import { adminRequest } from '../../src/cli/admin.js';
import { LongTimer } from '../../src/util/long-timer.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  rig = await startRig();
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a LongTimer of 2^31 ms does not fire at once, and warns of no overflow', async () => {
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.name);
  process.on('warning', onWarning);
  let fired = false;
  const t = new LongTimer(2 ** 31, () => {
    fired = true;
  });
  try {
    await sleep(100);
    assert.equal(fired, false, 'a 24.8-day timer fired within 100 ms');
    assert.equal(t.pending, true);
    assert.deepEqual(warnings, []);
  } finally {
    t.cancel();
    process.off('warning', onWarning);
  }
});

test('a LongTimer waits its whole delay across re-armed chunks, then fires once', async () => {
  const t0 = Date.now();
  const fired: number[] = [];
  const t = new LongTimer(60, () => fired.push(Date.now() - t0), { chunkMs: 7 });
  // No wall-clock window is asserted (a loaded machine stretches any): it fires after the whole 60 ms,
  // not after its first 7 ms chunk, and then holds no timer that could fire again.
  await until('the timer to fire', () => fired.length > 0, 30_000);
  assert.ok(fired[0]! >= 59, `fired after ${fired[0]} ms of 60: a chunk, not the whole delay`);
  assert.equal(t.pending, false, 'no timer left armed once it fired');
  await sleep(50);
  assert.equal(fired.length, 1, 'fired once');
});

test('a revoke deadline over 24 h is refused naming the field; the lease stays active', async () => {
  const c = await ClientProc.spawn();
  try {
    const { info } = await c.call('connect', { socket: rig.socket });
    const admin = join(rig.broker.dir, 'admin.sock');
    for (const deadlineMs of [2 ** 31, MAX_REVOKE_DEADLINE_MS + 1, -1, 1.5, '100']) {
      const err = await adminRequest(admin, { op: 'revoke', id: info.lease, deadlineMs }).catch((e) => e);
      assert.ok(err instanceof Error, `deadlineMs ${deadlineMs} was accepted`);
      assert.equal((err as { code?: string }).code, 'EINVAL');
      assert.match(err.message, /deadlineMs must be an integer from 0 to 86400000 \(24 h\)/);
    }
    assert.throws(() => rig.broker.leases.revoke(info.lease, 2 ** 31), /deadlineMs must be an integer/);
    await sleep(100);
    const lease = rig.broker.leases.get(info.lease);
    assert.equal(lease?.state, 'active', 'the refused revoke touched the lease');
    // The longest accepted deadline is honoured: revoking, not reclaimed.
    await adminRequest(admin, { op: 'revoke', id: info.lease, deadlineMs: MAX_REVOKE_DEADLINE_MS });
    await sleep(100);
    assert.equal(lease?.state, 'revoking');
    assert.ok(lease.deadline! - Date.now() > MAX_REVOKE_DEADLINE_MS - 60_000);
    const cli = spawnSync(
      process.execPath,
      [DEVLEASE_BIN, 'revoke', info.lease, '--deadline', String(2 ** 31), '--admin', admin],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 2, cli.stderr);
    assert.match(cli.stderr, /--deadline must be a non-negative integer \(ms\) of at most 86400000 \(24 h\)/);
  } finally {
    await c.exit();
  }
});

test("the CLI's --deadline is digits only: '' and ' ' were 0 (an immediate forced reclaim), '0x10' 16", () => {
  const admin = join(rig.broker.dir, 'admin.sock');
  for (const v of ['', ' ', '0x10', '1e3', '+5', '-0', '5.0']) {
    const cli = spawnSync(
      process.execPath,
      [DEVLEASE_BIN, 'revoke', 'queue-0', `--deadline=${v}`, '--admin', admin],
      { encoding: 'utf8' },
    );
    assert.equal(cli.status, 2, `--deadline '${v}' was sent: ${cli.stderr}`);
    assert.match(cli.stderr, /--deadline must be a non-negative integer \(ms\)/);
    assert.ok(cli.stderr.includes(`got '${v}'`), cli.stderr);
  }
});
