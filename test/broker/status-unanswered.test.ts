// `devlease status` when the device does not answer: the moment an operator asks is when the device is in
// trouble, so the driver's part of the answer says the read failed, and the rest (recovery, leases, sockets)
// is still there. It failed the whole request with ETIMEDOUT. The SA-1 simulator child stopped with SIGSTOP is
// a device that answers nothing.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

type Status = { driver: Record<string, unknown>; recovery: unknown; leases: number };

test('status while the device does not answer: the driver part names the failure, the rest is answered', async () => {
  // The heartbeat's own checks far slower than the test: no hang is declared (and no recovery started) while the
  // device is stopped, so what status meets is the unanswered read itself.
  const rig = await startRig({
    deviceTimeoutMs: 300,
    config: { sa1: { heartbeat_ms: 60_000, response_timeout_ms: 600_000 } },
  });
  let stopped = false;
  try {
    const admin = join(rig.broker.dir, 'admin.sock');
    const before = (await adminRequest(admin, { op: 'status' })) as Status;
    assert.equal(before.driver.error, undefined, 'no error while the device answers');
    assert.ok(Array.isArray(before.driver.status), 'the SA-1 status registers are read');

    rig.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
    stopped = true;
    const during = (await adminRequest(admin, { op: 'status' }, 30_000)) as Status;
    assert.equal(during.driver.driver, 'sa1');
    assert.equal(during.driver.code, 'ETIMEDOUT', JSON.stringify(during.driver));
    assert.match(String(during.driver.error), /^reading the device's state failed: /);
    assert.ok(during.recovery, 'the recovery state is still reported');
    assert.equal(during.leases, 0);

    rig.sim.process.kill('SIGCONT');
    stopped = false;
  } finally {
    if (stopped) rig.sim.process.kill('SIGCONT');
    await rig.close();
  }
});
