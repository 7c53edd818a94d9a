// Datasheet rev 2 §2.4: the device raises ERR for a hang (or a reset nobody
// asked for), never for a reset its owner asked for. So a driver that has
// reset the device must still take the next ERR as news: here the heartbeat
// check is slowed to a minute, so only ERR can reveal the hang in time.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('after owner resets, a hang is still noticed by its ERR interrupt and the device recovered', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { sa1: { heartbeat_ms: 60_000 } } });
  try {
    await rig.broker.resetDevice();
    await rig.broker.resetDevice();
    const recovered = new Promise<void>((resolve) => rig.broker.once('recovered', resolve));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error('no recovery within 10 s of the hang: its ERR went unheard')),
        10_000,
      );
    });
    await rig.sim.inject({ kind: 'hang' });
    try {
      await Promise.race([recovered, deadline]);
    } finally {
      clearTimeout(timer);
    }
    assert.ok(
      rig.audit.some((e) => e.event === 'device-hang'),
      'audited as a hang',
    );
  } finally {
    await rig.close();
  }
});
