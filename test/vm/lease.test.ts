// A virtual machine as a lease client: QEMU 11.1's vfio-user-pci on a lease
// socket of `devlease daemon` (on `devlease sim`), and sa1-guest
// (test/vm/guest/sa1-guest) inside a 5 GiB guest (RAM above 4 GiB) driving
// the one queue the lease gives: rings in a 2 MiB huge page of guest RAM at
// IOVAs of the lease's own view (one DMA_MAP), MSI-X, verified work, a
// completion by interrupt, a queue fault it recovers from by resetting the
// queue through the lease, QEMU never stopping the VM — and a QEMU killed
// outright leaving nothing leased. The revoke QEMU survives: lease-revoke.test.ts.
// Run by `npm run test:vm` (test/vm/run-all.mjs), never by `npm test`.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { assertNoFdLeak } from '../helpers/fds.js';
import { Peers, until } from '../interop/helpers/peers.js';
import { assertNeverStopped, broker, driverResult, type LeaseRow, leases } from './lease-rig.js';
import { guestDriver, guestImages, qemu11, Vm } from './rig.js';

const HUGE_PAGE = 2 * 1024 * 1024;

before(() => {
  qemu11();
  guestImages();
  guestDriver();
});

test('a guest with 5 GiB of RAM on a lease: work, an interrupt, a queue fault it resets and survives; killing its QEMU reclaims the lease', async (t) => {
  await assertNoFdLeak(async () => {
    const peers = new Peers();
    let vm: Vm | undefined;
    try {
      const { daemon, rundir, socket } = await broker(peers);
      vm = await Vm.boot(socket, [{ exec: [guestDriver(), '--hold'] }], { memMiB: 5120 });
      await driverResult(vm, 'a 5 GiB guest on a lease');
      t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      assert.equal(await vm.qmp.status(), 'running', 'the VM runs on after the queue fault');
      assertNeverStopped(vm);

      const pid = vm.pid;
      const mine = (await leases(rundir)).filter((l) => l.pid === pid);
      assert.equal(mine.length, 1, `devlease leases shows QEMU's pid ${pid}`);
      const lease = mine[0] as LeaseRow;
      // The guest's IOMMU mapped the huge page as one superpage: QEMU sent the lease one 2 MiB DMA_MAP.
      assert.deepEqual(
        { mappings: lease.mappings, mappedBytes: lease.mappedBytes },
        { mappings: 1, mappedBytes: `${HUGE_PAGE}` },
        "the lease holds the guest's one 2 MiB map",
      );

      await vm.kill(); // SIGKILL: no quit, no goodbye on the socket
      vm = undefined;
      await until(
        'the killed QEMU lease to be gone',
        async () => (await leases(rundir)).length === 0,
        60_000,
      );
      assert.ok(
        daemon.events.some((e) => e.event === 'reclaim' && e.lease === lease.id && e.pid === pid),
        `the broker logged the reclaim of QEMU's lease (events: ${daemon.events.map((e) => e.event).join(' ')})`,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${peers.describe()}`, { cause: err });
    } finally {
      await vm?.kill();
      await peers.close();
    }
  });
});

// QEMU's plain guest RAM has no fd: every DMA_MAP it forwards comes without one. With policy.dma_without_fd =
// "relay" the broker maps it on the simulator without an fd too and relays each device access to QEMU as
// DMA_READ/DMA_WRITE at the lease's own addresses (src/broker/lease-dma-relay.ts).
test('a guest whose RAM is not shared on a lease: the broker relays the device DMA to QEMU; the same work, interrupt, fault and reset', async (t) => {
  await assertNoFdLeak(async () => {
    const peers = new Peers();
    let vm: Vm | undefined;
    try {
      const { daemon, rundir, socket } = await broker(peers, '[policy]\ndma_without_fd = "relay"\n');
      vm = await Vm.boot(socket, [{ exec: [guestDriver(), '--hold'] }], { sharedRam: false });
      await driverResult(vm, 'a guest with unshared RAM on a lease');
      t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      assert.equal(await vm.qmp.status(), 'running', 'the VM runs on after the queue fault');
      assertNeverStopped(vm);
      assert.doesNotMatch(vm.stderr, /error reply on async request|Unrecoverable error/, 'QEMU saw no error');
      const pid = vm.pid;
      const mine = (await leases(rundir)).filter((l) => l.pid === pid);
      assert.equal(mine.length, 1, `devlease leases shows QEMU's pid ${pid}`);
      const lease = mine[0] as LeaseRow;
      assert.ok(lease.mappings > 0, 'the guest mapped its rings');
      assert.equal(
        lease.relayedMappings,
        lease.mappings,
        'every map of the lease came without an fd: relayed',
      );
      const exit = await vm.quit();
      vm = undefined;
      assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU exits 0 on quit');
      await until('the lease to be gone', async () => (await leases(rundir)).length === 0, 60_000);
      assert.ok(daemon.events.some((e) => e.event === 'reclaim' && e.lease === lease.id));
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${peers.describe()}`, { cause: err });
    } finally {
      await vm?.kill();
      await peers.close();
    }
  });
});
