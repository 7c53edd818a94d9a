// A lease's grant and reclaim with a listener that throws (a bug in whoever listens: metrics, an embedder).
// A reclaim that throws — here a 'state' listener's, as the reclaim starts — quarantines its lease (its
// resources stay out of the pool: nobody knows what the reclaim left undone) instead of ending the broker:
// reclaims are fired and forgotten from hang-ups, exits and deadlines, so before this their rejection went
// unhandled, and a shutdown or recovery waiting for the lease to park waited for good. A 'granted' listener's
// throw made a lease already in the table fail its grant, with no session left to end it.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Lease } from '../../src/broker/lease.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a reclaim that throws quarantines its lease; the broker goes on granting from the rest and shuts down', async () => {
  const logs: string[] = [];
  const rig = await startRig({ log: (m) => logs.push(m) });
  let thrown = false;
  rig.broker.leases.on('state', (l: Lease) => {
    if (l.state === 'reclaiming' && !thrown) {
      thrown = true;
      throw new Error('a state listener bug');
    }
  });
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    const first = (await a.call('connect', { socket: rig.socket })).info;
    await a.exit();
    await until(
      'the lease to be quarantined',
      () => rig.broker.leases.get(first.lease)?.state === 'quarantined',
    );
    const lease = rig.broker.leases.get(first.lease)!;
    assert.match(lease.quarantineReason ?? '', /^reclaim failed: a state listener bug/);
    assert.ok(
      rig.audit.some((r) => r.event === 'quarantined' && r.lease === first.lease),
      'the audit says why',
    );
    assert.ok(logs.some((l) => l.includes(`lease ${first.lease}: reclaim failed`)));
    // What the broker held for it is let go of all the same: the notification fds, its slice fds.
    const held = [lease.errFd, lease.reqFd, lease.noticeFd].filter((fd) => fd !== null);
    assert.ok(held.length > 0, 'the client wired its notification eventfds');
    assert.ok(
      held.every((fd) => fd.closed),
      'the notification fds are closed',
    );
    const units = [...lease.slices.values()].flat();
    assert.ok(units.length > 0, 'the lease held slices');
    assert.ok(
      units.every((u) => u.deviceFd.closed),
      "the broker's slice fds are closed",
    );
    // Its queue stays out of the pool; the next lease gets another.
    const second = (await b.call('connect', { socket: rig.socket })).info;
    assert.notEqual(second.queue, first.queue, "the quarantined lease's queue is not leased again");
    await b.exit();
    await until('the second lease to be released', () => rig.broker.leases.get(second.lease) === undefined);
  } finally {
    await a.exit();
    await b.exit();
    await rig.close(); // does not wait for the quarantined lease: it is parked
  }
});

test("a 'granted' listener that throws: the lease is granted all the same, and reclaimed when its client goes", async () => {
  const logs: string[] = [];
  const rig = await startRig({ log: (m) => logs.push(m) });
  rig.broker.leases.on('granted', () => {
    throw new Error('a granted listener bug');
  });
  const c = await ClientProc.spawn();
  try {
    const { info } = await c.call('connect', { socket: rig.socket });
    assert.equal(rig.broker.leases.get(info.lease)?.state, 'active');
    assert.ok(
      logs.some((l) => l.includes(`lease ${info.lease}: a 'granted' listener threw: a granted listener bug`)),
    );
    await c.exit();
    await until('the lease to be released', () => rig.broker.leases.get(info.lease) === undefined);
  } finally {
    await c.exit();
    await rig.close();
  }
});
