// A quarantined lease travels through an upgrade. Its reclaim let go of its slices (their device fds closed)
// but the lease still lists them; the old broker sent each unit's fd without asking whether it was still
// open, and every upgrade failed ("closed") for as long as the lease stayed quarantined.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { UpgradeRig } from './rig.js';

after(trackFdLeaks());

type LeaseRow = { id: string; state: string; queue?: number | null; quarantineReason?: string };

test('a quarantined lease (its queue reset never finished) is carried over, still quarantined, and upgrades go on working', {
  timeout: 240_000,
}, async () => {
  const rig = await UpgradeRig.start({}, { config: '[lifetime]\nquiesce_timeout_ms = 100\n' });
  try {
    const client = await VfioUserClient.connect(rig.queueSocket);
    const qp = await client.regionInfo(2);
    assert.ok(qp.fd, 'the lease has a slice (its queue page)');
    qp.fd.close();
    const [lease] = (await rig.request({ op: 'leases' })) as LeaseRow[];
    assert.ok(lease && typeof lease.queue === 'number', 'one lease with a queue');
    await rig.sim.inject({ kind: 'stuckReset', queue: lease.queue! });
    await client.close();
    const row = async () =>
      ((await rig.request({ op: 'leases' })) as LeaseRow[]).find((l) => l.id === lease.id);
    await until('the lease to be quarantined', async () => (await row())?.state === 'quarantined', 30_000);
    const before = await row();
    const old = await rig.brokerPid();
    const up = (await rig.request({ op: 'upgrade' })) as { pid: number; upgraded?: boolean };
    assert.notEqual(up.pid, old, 'a new broker serves');
    const after = await row();
    assert.equal(after?.state, 'quarantined', 'still quarantined in the new broker');
    assert.equal(after?.quarantineReason, before?.quarantineReason, 'with its reason');
    // And once more: the new broker hands it over in turn.
    const again = (await rig.request({ op: 'upgrade' })) as { pid: number };
    assert.notEqual(again.pid, up.pid);
    assert.equal((await row())?.state, 'quarantined');
  } finally {
    await rig.close();
  }
});
