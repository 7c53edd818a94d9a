// A queue is readied for its next lease when the last holder is reclaimed
// (Driver.prepare), so the grant needs no reset of its own. What the last
// holder wrote to its queue page up to the moment its slice was revoked —
// after the quiesce's reset — must not reach the next lease.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { QP } from '../../src/hw/sa1/regs.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('what the last holder wrote to its queue page after the quiesce does not reach the next lease', async () => {
  const rig = await startRig({ sim: { numQueues: 1 } });
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    const infoA = (await a.call('connect', { socket: rig.socket })).info;
    // Between reclaim's quiesce (which resets the queue) and the slice revoke, the holder still has its page.
    const driver = rig.broker.driver;
    const quiesce = driver.quiesce.bind(driver);
    driver.quiesce = async (res) => {
      await quiesce(res);
      await a.call('pageWrite', { offset: QP.SQ_BASE, value: 0x7000 });
      await a.call('pageWrite', { offset: QP.SQ_SIZE, value: 8 });
      await a.call('pageWrite', { offset: QP.SQ_TAIL, value: 3 });
    };
    rig.broker.leases.revoke(infoA.lease, 0);
    await until('the lease to be released', () => rig.broker.leases.all().length === 0, 5000);
    driver.quiesce = quiesce;
    const infoB = (await b.call('connect', { socket: rig.socket })).info;
    assert.equal(infoB.queue, infoA.queue, 'the same queue is leased again');
    for (const reg of [QP.SQ_BASE, QP.SQ_SIZE, QP.SQ_TAIL, QP.SQ_HEAD]) {
      assert.equal(
        await b.call('pageRead', { offset: reg }),
        0,
        `queue page register 0x${reg.toString(16)} is reset`,
      );
    }
  } finally {
    await Promise.all([a.kill(), b.kill()]);
    await rig.close();
  }
});
