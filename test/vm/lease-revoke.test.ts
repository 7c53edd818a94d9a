// A virtual machine whose lease the owner revokes with a deadline: QEMU 11.1's
// vfio-user-pci on a lease of `devlease daemon` (on `devlease sim`), sa1-guest
// inside the guest doing its work and then submitting NOPs until they stop
// completing. QEMU wires no REQ interrupt, so it is never asked to let go: at
// the deadline the broker reclaims the lease, and QEMU — a stock client — must
// survive that (no SIGBUS on the queue page it mmapped, no ERR stopping the
// VM, the socket kept open), the guest's queue merely stalling.
// Run by `npm run test:vm` (test/vm/run-all.mjs), never by `npm test`.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { assertNoFdLeak } from '../helpers/fds.js';
import { Peers, until } from '../interop/helpers/peers.js';
import {
  admin,
  assertNeverStopped,
  BOOT_MS,
  broker,
  driverResult,
  type LeaseRow,
  leases,
} from './lease-rig.js';
import { guestDriver, guestImages, qemu11, Vm } from './rig.js';

const REVOKE_DEADLINE_MS = 3000;

before(() => {
  qemu11();
  guestImages();
  guestDriver();
});

test('a VM on a lease revoked with a deadline: the lease is reclaimed, the guest queue stalls, QEMU and the VM go on', async (t) => {
  await assertNoFdLeak(async () => {
    const peers = new Peers();
    let vm: Vm | undefined;
    try {
      const { daemon, rundir, socket } = await broker(peers);
      vm = await Vm.boot(socket, [{ exec: [guestDriver(), '--hold'] }]);
      const done = await driverResult(vm, 'a 1 GiB guest on a lease');
      t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      assertNeverStopped(vm);

      const mine = (await leases(rundir)).filter((l) => l.pid === vm?.pid);
      assert.equal(mine.length, 1, `devlease leases shows QEMU's pid ${vm.pid}`);
      const id = (mine[0] as LeaseRow).id;

      // The guest keeps submitting NOPs; the owner revokes its lease with a deadline.
      await vm.waitLine(/DEVLEASE-VM-TICK/, done, BOOT_MS);
      await admin(rundir, 'revoke', id, '--deadline', `${REVOKE_DEADLINE_MS}`);
      await until(
        'the revoked lease to be gone',
        async () => !(await leases(rundir)).some((l) => l.id === id),
        60_000,
      );
      assert.ok(
        daemon.events.some((e) => e.event === 'reclaim' && e.lease === id),
        `the broker logged the reclaim (events: ${daemon.events.map((e) => e.event).join(' ')})`,
      );
      // The guest's queue no longer completes anything; QEMU and the VM go on.
      await vm.waitLine(/DEVLEASE-VM-STALLED/, done, 120_000);
      assert.equal(await vm.qmp.status(), 'running', 'the VM runs on after the revoke');
      assertNeverStopped(vm);
      const exit = await vm.quit();
      vm = undefined;
      assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU survived the revoke: it exits 0 on quit');
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${peers.describe()}`, { cause: err });
    } finally {
      await vm?.kill();
      await peers.close();
    }
  });
});
