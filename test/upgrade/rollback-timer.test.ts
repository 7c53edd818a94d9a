// A rollback after the hold waits (bounded, 5 s) for the new broker to be gone before it reads the device
// again. The bound's timer used to stay armed when the new broker was gone first: for 5 s after the upgrade
// ended it kept the process alive (a daemon told to stop waited for it). The broker runs in this process here,
// so its timers can be counted.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { startRig } from '../helpers/broker-rig.js';

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

test('a rollback whose new broker is gone already leaves no timer behind', { timeout: 120_000 }, async () => {
  // A long heartbeat: the driver arms no timer of its own while this test counts.
  const rig = await startRig({ config: { sa1: { heartbeat_ms: 60_000 } } });
  process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'] = 'exit'; // the new broker exits once the state came
  try {
    const before = timers();
    await assert.rejects(rig.broker.upgrade({ binary: DEVLEASE_BIN, deadlineMs: 60_000 }), (err: Error) => {
      assert.match(err.message, /upgrade rolled back: the new broker (exited|hung up)/);
      return true;
    });
    assert.equal(timers(), before, 'the rollback left no timer armed');
  } finally {
    delete process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'];
    await rig.close();
  }
});
