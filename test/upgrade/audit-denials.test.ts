// An upgraded broker exits without close(): the counts of the denials it had suppressed in the audit log
// (src/broker/audit-denials.ts) are written as it hands over, not lost with it. (Were the upgrade to take
// longer than the 10 s window, the window's end would write the count first and this would not tell.)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { alive, UpgradeRig } from './rig.js';

after(trackFdLeaks());

test('the old broker writes the count of the denials it suppressed before it hands over', {
  timeout: 120_000,
}, async () => {
  const rig = await UpgradeRig.start();
  try {
    const old = await rig.brokerPid();
    await rig.request({ op: 'drain', on: true });
    // The broker's default: 10 denials of a key written per 10 s window, the rest counted.
    for (let i = 0; i < 20; i++) {
      const err = await connect({ socket: rig.queueSocket }).catch((e: unknown) => e);
      assert.equal((err as { code?: string }).code, 'EBUSY', `connection ${i} is refused`);
    }
    assert.equal((await rig.request({ op: 'upgrade' })).upgraded, true);
    await until('the old broker to exit', () => !alive(old), 30_000);
    const events = rig.events();
    const handedOver = events.findIndex((e) => e.event === 'upgrade-handed-over');
    assert.ok(handedOver >= 0, 'the old broker handed over');
    const before = events.slice(0, handedOver);
    assert.equal(before.filter((e) => e.event === 'deny').length, 10);
    const counts = before.filter((e) => e.event === 'suppressed');
    assert.deepEqual(
      counts.map((c) => [c.of, c.code, c.suppressed]),
      [['deny', 'EBUSY', 10]],
      'the old broker wrote what it had suppressed',
    );
  } finally {
    await rig.close();
  }
});
