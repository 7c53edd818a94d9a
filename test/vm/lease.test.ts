// A virtual machine as a lease client: QEMU 11.1's vfio-user-pci on a lease
// socket of `devlease daemon` (on `devlease sim`), and sa1-guest
// (test/vm/guest/sa1-guest) inside the guest driving the one queue the lease
// gives: rings in guest RAM at IOVAs of the lease's own view, MSI-X, verified
// work, a completion by interrupt, a queue fault it recovers from by resetting
// the queue through the lease — and QEMU outliving a revoke, and a QEMU
// killed outright leaving nothing leased.
// Run by `npm run test:vm` (test/vm/run-all.mjs), never by `npm test`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { promisify } from 'node:util';
import { ST_WINDOW_VIOLATION } from '../../src/hw/sa1/datasheet.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { assertNoFdLeak } from '../helpers/fds.js';
import { type Daemon, Peers, until } from '../interop/helpers/peers.js';
import { guestDriver, guestImages, qemu11, Vm } from './rig.js';

const DRIVER = /DEVLEASE-VM-DRIVER (.*)$/;
const BOOT_MS = 240_000;
const REVOKE_DEADLINE_MS = 3000;

interface LeaseRow {
  id: string;
  pid: number;
  state: string;
}

before(() => {
  qemu11();
  guestImages();
  guestDriver();
});

async function admin(rundir: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [DEVLEASE_BIN, ...args, '--rundir', rundir, '--json'],
    {
      timeout: 30_000,
    },
  );
  return JSON.parse(stdout);
}
const leases = async (rundir: string): Promise<LeaseRow[]> => (await admin(rundir, 'leases')) as LeaseRow[];

/** devlease sim and devlease daemon on it; the lease socket a VM connects to. */
async function broker(peers: Peers): Promise<{ daemon: Daemon; rundir: string; socket: string }> {
  const sim = join(peers.dir, 'sim.sock');
  await peers.sim(sim, ['--queues', '8']);
  const rundir = join(peers.dir, 'run');
  const daemon = await peers.daemon(sim, rundir);
  const socket = daemon.sockets.queue;
  assert.ok(socket, `the daemon serves a 'queue' kind (sockets: ${JSON.stringify(daemon.sockets)})`);
  return { daemon, rundir, socket };
}

/** The guest driver's result line, checked: verified work and an interrupt, a fault, a reset, work again. */
async function driverResult(vm: Vm, what: string): Promise<number> {
  const { index, match } = await vm.waitLine(DRIVER, 0, BOOT_MS);
  const d = JSON.parse(match[1] as string);
  const ctx = `${what}\n${vm.context()}`;
  // What a lease lacks, named: the guest's maps refused (no IOVA view of its own), no MSI-X capability.
  const refused = /vfio_container_dma_map\(.*Operation not permitted/.test(vm.stderr)
    ? " (the lease refused QEMU's DMA_MAPs at the guest's IOVAs with EPERM: it has no IOVA view starting at 0)"
    : '';
  assert.equal(d.error, undefined, `the guest driver failed on the lease: ${d.error}${refused}\n${ctx}`);
  assert.equal(d.owner, false);
  assert.ok(d.vectors >= 1, `the lease has MSI-X vectors (${d.vectors})`);
  assert.ok(
    d.irqVector >= 0 && d.irqVectorAfterReset >= 0,
    'completions came by interrupt, before and after the reset',
  );
  assert.equal(
    d.fault.qError,
    ST_WINDOW_VIOLATION,
    'the out-of-window descriptor faulted the queue (Q_ERROR)',
  );
  return index;
}

function assertNeverStopped(vm: Vm): void {
  const events = vm.qmp.events.map((e) => e.event);
  assert.ok(!events.includes('STOP'), `the VM never stopped (QMP events: ${events.join(' ')})`);
  assert.doesNotMatch(vm.stderr, /Unrecoverable error/, 'QEMU saw no ERR signal');
}

test('a VM on a broker lease: verified work with an interrupt, a queue fault it resets and survives, then a revoke with a deadline that QEMU survives', async (t) => {
  await assertNoFdLeak(async () => {
    const peers = new Peers();
    let vm: Vm | undefined;
    try {
      const { daemon, rundir, socket } = await broker(peers);
      vm = await Vm.boot(socket, [{ exec: [guestDriver(), '--hold'] }]);
      const done = await driverResult(vm, 'a 1 GiB guest on a lease');
      t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      assert.equal(await vm.qmp.status(), 'running', 'the VM runs on after the queue fault');
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

test('a guest with 5 GiB of RAM leases and works; killing its QEMU reclaims the lease', async (t) => {
  await assertNoFdLeak(async () => {
    const peers = new Peers();
    let vm: Vm | undefined;
    try {
      const { daemon, rundir, socket } = await broker(peers);
      vm = await Vm.boot(socket, [{ exec: [guestDriver(), '--hold'] }], { memMiB: 5120 });
      await driverResult(vm, 'a 5 GiB guest on a lease');
      t.diagnostic(`guest driver done: ${((Date.now() - vm.startedAt) / 1000).toFixed(1)} s`);
      const pid = vm.pid;
      const mine = (await leases(rundir)).filter((l) => l.pid === pid);
      assert.equal(mine.length, 1, `devlease leases shows QEMU's pid ${pid}`);
      const id = (mine[0] as LeaseRow).id;

      await vm.kill(); // SIGKILL: no quit, no goodbye on the socket
      vm = undefined;
      await until(
        'the killed QEMU lease to be gone',
        async () => (await leases(rundir)).length === 0,
        60_000,
      );
      assert.ok(
        daemon.events.some((e) => e.event === 'reclaim' && e.lease === id && e.pid === pid),
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
