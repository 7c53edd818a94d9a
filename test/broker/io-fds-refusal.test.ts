// A device whose GET_REGION_IO_FDS refusal is final (ENOSPC: more io fds than one message carries, as an
// SA-1 with over 253 queues) is asked once per device connection, not once per lease: each refusal cost
// the simulator a pass over all its queues' eventfds. The leases work without a kick fd (the device's
// idle poll finds their doorbells).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('an ENOSPC refusal of GET_REGION_IO_FDS is asked of the device once; every lease still runs', async () => {
  const rig = await startRig({ sim: { numQueues: 300 } });
  const clients: ClientProc[] = [];
  // Count the broker's requests to the device (the real call runs).
  const client = rig.device.client;
  const ask = client.regionIoFds.bind(client);
  const refusals: string[] = [];
  client.regionIoFds = async (...args) => {
    try {
      return await ask(...args);
    } catch (err) {
      refusals.push((err as { code?: string }).code ?? 'no code');
      throw err;
    }
  };
  try {
    for (let i = 0; i < 3; i++) {
      const c = await ClientProc.spawn();
      clients.push(c);
      await c.call('connect', { socket: rig.socket });
      await c.call('queue');
      assert.equal((await c.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK', `lease ${i}'s NOP`);
    }
    assert.deepEqual(refusals, ['ENOSPC'], 'the device was asked once, and refused');
  } finally {
    client.regionIoFds = ask;
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
});
