// A rollback after the hold waits (bounded, 5 s) for the new broker to be gone before it reads the device
// again. The bound's timer used to stay armed when the new broker was gone first: for 5 s after the upgrade
// ended it kept the process alive (a daemon told to stop waited for it). The broker runs in this process here,
// so the bound's own timer can be watched: armed with its delay by the upgrade's code (the device requests'
// deadline, 5 s too by default, is armed elsewhere).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ROLLBACK_EXIT_WAIT_MS } from '../../src/broker/handover/upgrade.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { watchTimers } from '../helpers/timers.js';

after(trackFdLeaks());

test('a rollback whose new broker is gone already leaves no timer behind', { timeout: 120_000 }, async () => {
  const rig = await startRig();
  process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'] = 'exit'; // the new broker exits once the state came
  const timers = watchTimers('/handover/upgrade.js', ROLLBACK_EXIT_WAIT_MS);
  try {
    await assert.rejects(rig.broker.upgrade({ binary: DEVLEASE_BIN, deadlineMs: 60_000 }), (err: Error) => {
      assert.match(err.message, /upgrade rolled back: the new broker (exited|hung up)/);
      return true;
    });
    assert.equal(timers.armed(), 1, 'the rollback waited for the new broker to be gone, bounded');
    assert.equal(timers.live(), 0, 'the rollback left its bound armed');
  } finally {
    timers.stop();
    delete process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'];
    await rig.close();
  }
});
