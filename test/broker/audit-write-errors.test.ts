// An audit file that cannot take a record — here /dev/full, whose every write fails with ENOSPC, as a full disk's
// would (a client can fill a shared file system) — must cost no lease and no resource: the audit's write runs in
// the middle of grants and reclaims, and before this a throw there left a granted lease in the table with no
// session to end it, or a reclaim stopped with its queue held and its rejection unhandled. The records still
// reach the audit's stream and observers; each failure is counted (metrics) and logged, rate-limited.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientProc, startRig, untilReclaimed } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('with an audit file that takes nothing (ENOSPC), leases are granted and reclaimed, and every failure is counted and logged', async () => {
  const logs: string[] = [];
  const rig = await startRig({ config: { audit: { path: '/dev/full' } }, log: (m) => logs.push(m) });
  const t0 = Date.now();
  const clients: ClientProc[] = [];
  try {
    // More leases one after another than the device has queues: each reclaim must give its queue back.
    for (let i = 0; i < 10; i++) {
      const c = await ClientProc.spawn();
      clients.push(c);
      const { info } = await c.call('connect', { socket: rig.socket });
      assert.deepEqual(
        rig.broker.leases.all().map((l) => l.id),
        [info.lease],
        `lease ${i}: granted, and the only one in the table`,
      );
      await c.exit();
      await untilReclaimed(rig);
    }
    const events = rig.audit.map((r) => r.event);
    assert.equal(events.filter((e) => e === 'grant').length, 10, 'the grants reached the audit stream');
    assert.equal(events.filter((e) => e === 'released').length, 10, 'so did the leases ends');
    assert.ok(
      rig.broker.audit.writeErrors >= 30,
      `every record the file refused is counted (${rig.broker.audit.writeErrors})`,
    );
    const lines = logs.filter((l) => l.includes('audit: cannot append to /dev/full'));
    assert.ok(lines.length >= 1, `the failure is logged (logs: ${logs.slice(0, 5).join(' | ')})`);
    assert.match(lines[0]!, /ENOSPC/);
    // At most 5 lines and a "suppressed" summary per 10 s window of the log's (the broker's server log).
    const windows = Math.ceil((Date.now() - t0) / 10_000) + 1;
    assert.ok(
      lines.length <= 6 * windows,
      `rate-limited: ${lines.length} lines for ${rig.broker.audit.writeErrors} failures in ${windows} windows`,
    );
  } finally {
    for (const c of clients) await c.exit();
    await rig.close();
  }
});
