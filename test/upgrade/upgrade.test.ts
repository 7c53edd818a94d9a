// The broker upgrades in place while clients work: 4 clients copy and verify
// random bytes through their queues and make control requests (DMA map and
// unmap through the broker) through consecutive `devlease upgrade`s. No
// error, no disconnect, no new lease, every byte verified, every control
// request answered; the broker's pid changes, its upgrade count climbs.
// Nothing leaks: each new broker holds as many descriptors (of each kind) as
// the first did with the same leases (/proc/<pid>/fd, counted with the
// clients at rest), the lease count never changes, and this test process ends
// with the descriptors it started with.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { alive, fdKinds, total, UpgradeRig } from './rig.js';

after(trackFdLeaks());

const UPGRADES = Number(process.env['DEVLEASE_UPGRADE_ROUNDS'] ?? 20);

test(`4 clients keep working, unaware, through ${UPGRADES} consecutive upgrades`, {
  timeout: 600_000,
}, async () => {
  const rig = await UpgradeRig.start();
  try {
    for (let i = 0; i < 4; i++) await rig.addClient();
    const before = (await rig.request({ op: 'leases' })) as { id: string }[];
    assert.equal(before.length, 4);
    const pids = new Set<number>([await rig.brokerPid()]);
    // The broker's descriptors with these leases, nothing in flight (the clients rest meanwhile).
    const fdsAtRest = async (pid: number) => {
      await rig.pauseClients();
      try {
        return fdKinds(pid);
      } finally {
        rig.resumeClients();
      }
    };
    const first = await fdsAtRest(await rig.brokerPid());
    for (let u = 1; u <= UPGRADES; u++) {
      const old = await rig.brokerPid();
      const r = await rig.request({ op: 'upgrade' });
      assert.equal(r.upgraded, true);
      // A control request sent right after the handover is answered by the new broker.
      const status = await rig.request({ op: 'status' });
      assert.equal(status.upgrades, u, 'the upgrade count climbs by one per upgrade');
      assert.notEqual(status.pid, old);
      pids.add(status.pid);
      await until(() => !alive(old));
      await rig.progress(10);
      const now = await fdsAtRest(status.pid);
      assert.deepEqual(
        Object.fromEntries([...now].sort()),
        Object.fromEntries([...first].sort()),
        `upgrade ${u}: the new broker holds the first broker's descriptors (${total(first)}), no more, no fewer`,
      );
      assert.equal(((await rig.request({ op: 'leases' })) as unknown[]).length, 4, `upgrade ${u}: 4 leases`);
    }
    assert.equal(pids.size, UPGRADES + 1, 'each upgrade is a new broker process');
    // Started with --rundir and no config file: each new broker runs in that rundir too, not the default one.
    const dirs = rig
      .events()
      .filter((e) => e.event === 'ready' && e.upgraded)
      .map((e) => e.dir);
    assert.deepEqual(
      dirs,
      Array(UPGRADES).fill(join(rig.dir, 'run', 'sa1')),
      'each new broker in the same rundir',
    );
    const after = (await rig.request({ op: 'leases' })) as { id: string; state: string }[];
    assert.deepEqual(
      after.map((l) => l.id).sort(),
      before.map((l) => l.id).sort(),
      'the same leases, none new',
    );
    const stats = await rig.stopClients();
    for (const s of stats) {
      assert.deepEqual(s.errors, [], `client ${s.leaseId}: no error`);
      assert.equal(s.disconnects, 0, `client ${s.leaseId}: no disconnect`);
      assert.ok(s.copies > UPGRADES * 10 && s.bytes > 0 && s.controls > 0);
    }
  } finally {
    await rig.close();
  }
});

async function until(pred: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error('the old broker did not exit');
    await new Promise((r) => setTimeout(r, 20));
  }
}
