// The default policy is a fair share: the lease socket is 0666, so any local
// uid may lease, but one uid gets at most ceil(queues / 4) of them and cannot
// refuse everyone else. Root and the broker's own uid are not limited. The
// clients here run as other uids (forked with uid/gid; the tests run as root).
import assert from 'node:assert/strict';
import { chmodSync } from 'node:fs';
import { after, test } from 'node:test';
import { configFromObject, fairShare } from '../../src/broker/config.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const NOBODY = { uid: 65534, gid: 65534 };
const OTHER = { uid: 65533, gid: 65533 };

test('with the default config one uid cannot take every queue; another uid and root still lease', async () => {
  const rig = await startRig({ sim: { numQueues: 8 } });
  // The rig's folder is 0700 (mkdtemp): let other uids reach the 0666 lease socket, as in /run/devlease.
  chmodSync(rig.dir, 0o755);
  assert.equal(fairShare(8), 2);
  const hog = await Promise.all([1, 2, 3].map(() => ClientProc.spawn(NOBODY)));
  const other = await ClientProc.spawn(OTHER);
  const root = await Promise.all([1, 2, 3].map(() => ClientProc.spawn()));
  try {
    const results = await Promise.allSettled(hog.map((c) => c.call('connect', { socket: rig.socket })));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 2, 'the hog got its fair share');
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.equal(refused.reason.code, 'EACCES');
    assert.match(
      refused.reason.message,
      /uid 65534 already holds 2 lease\(s\); the limit is 2 \(a fair share: 8 'queue' lease\(s\) \/ 4, rounded up\)/,
    );
    assert.ok(
      rig.audit.some((e) => e.event === 'deny' && e.uid === NOBODY.uid && /fair share/.test(e.reason)),
    );
    await other.call('connect', { socket: rig.socket });
    for (const c of root) await c.call('connect', { socket: rig.socket });
    const byUid = new Map<number, number>();
    for (const l of rig.broker.leases.all()) byUid.set(l.ctx.uid, (byUid.get(l.ctx.uid) ?? 0) + 1);
    assert.deepEqual(Object.fromEntries(byUid), { 0: 3, 65533: 1, 65534: 2 });
  } finally {
    await Promise.all([...hog, other, ...root].map((c) => c.exit()));
    await until('every lease to be released', () => rig.broker.leases.all().length === 0);
    await rig.close();
  }
});

test('max_leases = "fair" in a rule, a count, or a named error', () => {
  const c = configFromObject({ policy: { rule: [{ uid: 5, max_leases: 'fair' }, { any: true }] } });
  assert.deepEqual(
    c.policy.rules.map((r) => r.maxLeases),
    ['fair', 'fair'],
  );
  assert.throws(
    () => configFromObject({ policy: { rule: [{ any: true, max_leases: 'half' }] } }),
    /config: policy\.rule\[0\]\.max_leases: must be "fair" or an integer from 0 to 1048576 \(got half\)/,
  );
  // Defaults: root (and the broker's uid) unlimited, everyone else fair.
  const d = configFromObject({});
  assert.deepEqual(d.policy.rules.at(-1)?.match, { any: true });
  assert.equal(d.policy.rules.at(-1)?.maxLeases, 'fair');
  assert.equal(d.policy.rules[0]?.match.uid, 0);
  assert.equal(fairShare(64), 16);
  assert.equal(fairShare(1), 1);
  assert.equal(fairShare(0), 1);
});
