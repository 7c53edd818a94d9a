// The OLD broker killed at each step of the handover (stopped there by the
// test-only DEVLEASE_TEST_UPGRADE_OLD_STOP, then SIGKILLed): the device and
// the leases end up owned by exactly one broker, or reclaimed cleanly —
// never lost, never owned twice.
//  - before the whole state is sent ('started', 'mid-transfer'): the new broker
//    has nothing it can serve; it exits, closing what it received. No broker
//    holds the device; a restarted broker owns it and leases anew.
//  - after the whole state is sent ('transferred', 'ready'): the new broker is
//    the only owner left and takes over: the same leases, clients carry on
//    without a disconnect, the `upgrade` request is answered, new leases work.
// Ownership is checked in the simulator's view (one owner connection) and the
// kernel's (which processes hold that connection: test/upgrade/holders.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { deviceHolders } from './holders.js';
import { alive, stopped, UpgradeRig } from './rig.js';

after(trackFdLeaks());

const STEPS = [
  ['started', false],
  ['mid-transfer', false],
  ['transferred', true],
  ['ready', true],
] as const;

for (const [step, takesOver] of STEPS) {
  test(`the old broker killed at '${step}': ${takesOver ? 'the new one owns everything' : 'reclaimed cleanly, a restart owns the device'}`, {
    timeout: 240_000,
  }, async () => {
    const rig = await UpgradeRig.start({ DEVLEASE_TEST_UPGRADE_OLD_STOP: step });
    try {
      await rig.addClient();
      await rig.addClient();
      await rig.progress(10);
      const before = ((await rig.request({ op: 'leases' })) as { id: string }[]).map((l) => l.id).sort();
      const oldPid = rig.daemon.pid!;
      assert.deepEqual(deviceHolders(rig.sim.socketPath), [[oldPid]]);
      const asked = rig.request({ op: 'upgrade', deadlineMs: 60_000 }, 120_000).then(
        (r) => ({ ok: true as const, r }),
        (err: Error) => ({ ok: false as const, err }),
      );
      await until(`the old broker to stop at '${step}'`, () => stopped(oldPid), 60_000);
      const newPid = rig.events().find((e) => e.event === 'upgrade-start')?.pid as number;
      assert.ok(newPid > 0, 'the upgrade-start audit record names the new broker');
      const exited = new Promise((r) => rig.daemon.once('exit', r));
      rig.daemon.kill('SIGKILL'); // oldPid is this child's: its handle, never the pid
      await exited;
      if (takesOver) {
        const answer = await asked;
        assert.ok(answer.ok, `the upgrade request is answered: ${answer.ok ? '' : answer.err.message}`);
        assert.equal(answer.r.upgraded, true);
        assert.equal(answer.r.pid, newPid);
        const status = await rig.request({ op: 'status' });
        assert.equal(status.pid, newPid);
        assert.equal(status.upgrades, 1);
        const leases = (await rig.request({ op: 'leases' })) as { id: string; state: string }[];
        assert.deepEqual(leases.map((l) => l.id).sort(), before, 'the same leases, served by the new broker');
        assert.ok(leases.every((l) => l.state === 'active'));
        await rig.progress(10);
      } else {
        await until('the new broker to give up', () => !alive(newPid), 60_000);
        const answer = await asked;
        assert.equal(answer.ok, false, 'nobody answers the upgrade: its broker is gone');
        await until(
          'the simulator to see its owner gone',
          async () => (await rig.sim.owner()).owner === null,
          30_000,
        );
        assert.deepEqual(deviceHolders(rig.sim.socketPath), [], 'no process holds the device');
        // Their leases ended with their broker: each client saw it.
        for (const s of await rig.stopClients())
          assert.ok(s.disconnects > 0 || s.errors.length > 0, `client ${s.leaseId} saw its lease end`);
        rig.clients.length = 0;
        // The service manager's restart: a fresh broker owns the device.
        await rig.startDaemon();
      }
      // Exactly one owner, in the simulator's view and the kernel's.
      const owner = takesOver ? newPid : rig.daemon.pid!;
      const view = await rig.sim.owner();
      assert.equal(view.connections, 1, 'the simulator serves one connection');
      assert.ok(view.owner, 'and it is the owner');
      assert.deepEqual(deviceHolders(rig.sim.socketPath), [[owner]], 'held by exactly one broker process');
      // A new lease works, from the broker that owns the device.
      const fresh = await rig.addClient();
      await rig.progress(5);
      const stats = await rig.stopClients();
      for (const s of stats) {
        assert.deepEqual(s.errors, [], `client ${s.leaseId}: no error`);
        assert.equal(s.disconnects, 0, `client ${s.leaseId}: no disconnect`);
      }
      assert.equal(stats.length, takesOver ? 3 : 1);
      assert.ok(fresh);
    } finally {
      await rig.close();
    }
  });
}
