// A kernel device signals an AER error once (its ERR irq), and only to the broker wired to it: the old broker,
// until the new one takes the device over at the commit. An error heard after the hold's last check and before
// the commit started a recovery (grants suspended, clients told, reclaims waiting on the held table) in a broker
// about to hand over leases the state called live: the new broker carried them on a device nobody recovered.
// The upgrade is now rolled back, and the recovery runs in the broker that heard the error. The simulator's
// device object emits the error here, right after the state went out (the new broker has not answered yet).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';

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
