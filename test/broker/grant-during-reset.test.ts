// An owner's device reset that begins while a lease is being granted: the reset reclaims the leases in the
// table, but the one being granted was not in it yet. Its device commands were served before the reset, it was
// added to the table after, and the reset then disabled its queue: the lease showed active, its queue was out
// of the pool, and its client was never told (its submissions never completed). Now the grant fails (EAGAIN,
// saying why) and the client leases again once the device is back.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { BAR0, Q, Q_CTRL, qcfg } from '../../src/hw/sa1/regs.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test("a device reset that begins while a lease's device programming is on its way: the grant fails, no lease is left on a reset queue", async () => {
  const rig = await startRig({ sim: { numQueues: 2 } });
  const driver = rig.broker.driver;
  const activate = driver.activate.bind(driver);
  let reset: Promise<void> | null = null;
  // The owner's reset starts one microtask after the grant's commands went out (before any answer is read).
  driver.activate = (res) => {
    const p = activate(res);
    if (!reset) queueMicrotask(() => (reset = rig.broker.resetDevice()));
    return p;
  };
  try {
    const err = await connect({ socket: rig.socket }).then(
      (l) => {
        l.close();
        return null;
      },
      (e: Error & { code?: string }) => e,
    );
    assert.ok(reset, 'the reset began during the grant');
    await reset;
    assert.ok(err, 'the grant that raced the reset failed');
    assert.match(String(err.message), /EAGAIN|being reset|recover/);
    assert.deepEqual(
      rig.broker.leases.all().map((l) => `${l.id} ${l.state}`),
      [],
      'no lease left behind the reset',
    );
    // Both queues are back in the pool, and a lease after the reset works: its queue is enabled.
    driver.activate = activate;
    const leases = [await connect({ socket: rig.socket }), await connect({ socket: rig.socket })];
    for (const l of leases) {
      const q = l.info.queue!;
      const ctrl = await rig.broker.device.read32(BAR0, qcfg(q, Q.CTRL));
      assert.equal(ctrl & Q_CTRL.ENABLE, Q_CTRL.ENABLE, `queue ${q} is enabled for its holder`);
      l.close();
    }
  } finally {
    await rig.close();
  }
});
