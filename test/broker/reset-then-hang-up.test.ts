// A client's DEVICE_RESET still in progress when its lease ends (it hangs up right behind the request): the
// reclaim waits for the reset, as for a DMA_MAP or SET_IRQS in progress, before it stops the queue. Before,
// the reset's last write (Q_CTRL.ENABLE) went to the device behind the reclaim's quiesce: the queue came back
// enabled, the reclaim marked it clean, and the next grant — which skips the reset of a clean queue — could
// not program it (the device ignores QCFG writes to an enabled queue, datasheet §2.2), so the next holder
// got the previous holder's device memory window.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { BAR0, Q, Q_CTRL, qcfg } from '../../src/hw/sa1/regs.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('a DEVICE_RESET in progress when the lease ends: the reclaim waits for it, and the queue goes back stopped', async () => {
  const rig = await startRig();
  // The lease ends (as on its holder's hang-up) right after the broker starts the reset: its first device
  // command is out, its last not yet (a microtask: before any reply can be read).
  const driver = rig.broker.driver;
  const resetLease = driver.resetLease.bind(driver);
  driver.resetLease = (res) => {
    const p = resetLease(res);
    const [held] = rig.broker.leases.all().filter((l) => l.resources === res);
    queueMicrotask(() => void rig.broker.leases.reclaim(held!, 'client hung up'));
    return p;
  };
  try {
    for (let round = 0; round < 5; round++) {
      const lease = await connect({ socket: rig.socket });
      const [held] = rig.broker.leases.all().filter((l) => l.live);
      const q = held!.resources.queue!;
      const released = new Promise<void>((resolve) =>
        rig.broker.leases.on('released', function on(l: { id: string }) {
          if (l.id !== held!.id) return;
          rig.broker.leases.off('released', on);
          resolve();
        }),
      );
      const err = await lease.client.reset().catch((e: Error) => e);
      assert.ok(err instanceof Error, 'the reset of a lease that ended is refused');
      lease.close();
      await released;
      const ctrl = await rig.broker.device.read32(BAR0, qcfg(q, Q.CTRL));
      assert.equal(ctrl & Q_CTRL.ENABLE, 0, `round ${round}: queue ${q} is stopped after its lease ended`);
    }
  } finally {
    await rig.close();
  }
});
