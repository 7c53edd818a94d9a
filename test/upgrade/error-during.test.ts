// A recovery that begins during an upgrade's transfer (after the hold's last check, before the commit) suspends
// grants and reclaims leases the state called live: the new broker would carry them on a device nobody
// recovered. The upgrade is rolled back, and the recovery runs in the broker that began it. The simulator's
// device object emits an error here, right after the state went out (the new broker has not answered yet). (A
// kernel device's AER error no longer does this: its signals are held during the transfer and read by the broker
// that carries on, test/device-kernel/handover.test.ts and the guest's aer.test.ts; this guards the last check.)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('an AER error during the transfer: the upgrade rolls back, the old broker recovers the device', {
  timeout: 120_000,
}, async () => {
  const rig = await startRig({ sim: { numQueues: 2 } });
  let client: ClientProc | null = null;
  try {
    client = await ClientProc.spawn();
    await client.call('connect', { socket: rig.socket });
    const socket = rig.device.client.socket;
    const pause = socket.pause.bind(socket);
    // hold() pauses the device connection just before its last check, then the state is sent at once.
    // Once: the connection's back-pressure pauses it too, and each would be one more error.
    socket.pause = () => {
      socket.pause = pause;
      pause();
      setImmediate(() => rig.device.emit('error-reported', 'an uncorrectable PCIe error'));
      return socket;
    };
    const recovered = new Promise<void>((resolve) => rig.broker.once('recovered', resolve));
    await assert.rejects(rig.broker.upgrade({ binary: DEVLEASE_BIN, deadlineMs: 60_000 }), (err: Error) => {
      assert.match(
        err.message,
        /upgrade rolled back: the broker cannot be upgraded now: grants are suspended/,
      );
      return true;
    });
    await recovered;
    assert.ok(rig.audit.some((e) => e.event === 'device-error'));
    assert.ok(!rig.audit.some((e) => e.event === 'upgrade-handed-over'));
    await until('the lease to be reclaimed', () => rig.broker.leases.all().length === 0);
    const next = await ClientProc.spawn();
    try {
      await next.call('connect', { socket: rig.socket });
    } finally {
      await next.kill();
    }
  } finally {
    await client?.kill();
    await rig.close();
  }
});
