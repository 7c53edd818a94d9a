// The broker's VfioUserDevice keeps the device's region io fds (one ioeventfd
// per SA-1 queue page) per connection. A reconnect closes the old
// connection's and asks the new one for them at once: afterwards the broker
// holds exactly as many ioeventfds as before — not none until some lease asks
// (which the fail-nth suite took for 8 leaked eventfds after an injected
// recvInto failure on the device connection), and never both sets.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { BAR2 } from '../../src/hw/sa1/regs.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const eventfds = (): number => [...openFds().values()].filter((t) => t === 'anon_inode:[eventfd]').length;

test('a reconnect replaces the cached region io fds: the same number held, the old ones closed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-iofds-'));
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 8 });
  const dev = await VfioUserDevice.connect(sim.socketPath);
  try {
    const before = eventfds();
    const first = await dev.regionIoFds(BAR2); // caches the device's 8, hands back dups
    assert.equal(first.fds.length, 8, 'one ioeventfd per queue page');
    for (const fd of first.fds) fd.close();
    const cached = eventfds();
    assert.equal(cached, before + 8, 'the device keeps one set of io fds per connection');

    dev.abandon(Object.assign(new Error('test: connection dropped'), { code: 'ECONNRESET' }));
    await dev.reconnect();
    assert.equal(
      eventfds(),
      cached,
      "after a reconnect the new connection's io fds are held, the old ones closed",
    );

    const again = await dev.regionIoFds(BAR2);
    assert.equal(again.fds.length, 8);
    for (const fd of again.fds) fd.close();
    assert.equal(eventfds(), cached, 'asking again after the reconnect opens no second set');
  } finally {
    await dev.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
