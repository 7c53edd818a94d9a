// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// An operator unbinds the leased device from vfio-pci (as before a driver
// change, or a hot-unplug does): vfio-pci signals the REQ eventfd and waits
// until every fd of the device is closed. The broker must let go: its client
// is told, the daemon reports the device lost and exits 1, and the unbind
// completes. Without the REQ eventfd the unbind waited as long as the broker
// ran. After an upgrade the new broker is the one asked.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readlinkSync, writeFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { connect, type Lease } from '../../../src/client/index.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { Daemon, roundTrip, until } from './fixtures/daemon.js';
import { bdf, inEduGuest } from './fixtures/guest.js';

const UPGRADE_MS = 150_000;
const driverLink = `/sys/bus/pci/devices/${bdf}/driver`;

after(trackFdLeaks());

inEduGuest();

/** `echo BDF > .../vfio-pci/unbind` in a child: the write blocks in the kernel until the device is released. */
function unbind(): { proc: ChildProcess; exited: Promise<number | null> } {
  const proc = spawn('sh', ['-c', `echo ${bdf} > /sys/bus/pci/drivers/vfio-pci/unbind`], {
    stdio: 'inherit',
  });
  return { proc, exited: new Promise((resolve) => proc.once('exit', (code) => resolve(code))) };
}

/** Bound to vfio-pci again for the tests after this one (driver_override still names it: scripts/kernel-rig/init.sh). */
function rebind(): void {
  if (!existsSync(driverLink)) writeFileSync('/sys/bus/pci/drivers_probe', bdf);
  assert.match(readlinkSync(driverLink), /\/vfio-pci$/, `edu ${bdf} is bound to vfio-pci again`);
}

/** Unbind with `lease` held on `brokerPid`: the broker lets go, the client hears it, the unbind completes. */
async function unbindWhileLeased(d: Daemon, lease: Lease, brokerPid: number): Promise<void> {
  const ended: string[] = [];
  for (const ev of ['disconnected', 'device-reset', 'revoke-requested']) lease.on(ev, () => ended.push(ev));
  const u = unbind();
  let code: number | null | undefined;
  void u.exited.then((c) => {
    code = c;
  });
  try {
    await until('the unbind to complete', () => code !== undefined, 60_000);
    assert.equal(code, 0, 'the unbind succeeded');
    assert.ok(!existsSync(driverLink), `edu ${bdf} is bound to no driver`);
    await until('the broker to exit', () => !existsSync(`/proc/${brokerPid}`), 30_000);
    assert.match(d.out, /the device is lost: the kernel asks for the device back/);
    await until('the client to hear its lease end', () => ended.includes('disconnected'), 30_000);
  } finally {
    if (code === undefined) u.proc.kill('SIGKILL'); // a write stuck in the kernel ends when the device is free
  }
}

/** A daemon and a lease of it for `fn`; afterwards the daemon is stopped and edu bound to vfio-pci again. */
async function withLeasedDaemon(fn: (d: Daemon, lease: Lease) => Promise<void>): Promise<void> {
  const d = new Daemon();
  await d.start();
  let lease: Lease | null = null;
  try {
    lease = await connect({ socket: d.dma });
    await fn(d, lease);
  } catch (err) {
    throw Object.assign(err as Error, { message: `${(err as Error).message}\nbroker output:\n${d.out}` });
  } finally {
    lease?.close();
    await d.stop();
    rebind();
  }
}

test('an unbind of the leased device: the broker lets go (device lost, exit 1), the client is told, the unbind completes', async () => {
  await withLeasedDaemon(async (d, lease) => {
    const pid: number = (await d.request({ op: 'status' })).pid;
    const buf = await lease.dma.alloc(8192);
    assert.equal(await roundTrip(lease, buf, 'before the unbind'), 'before the unbind');
    await unbindWhileLeased(d, lease, pid);
    assert.equal(d.proc.exitCode, 1, 'the daemon exits 1 on a lost device');
  });
});

test('after an upgrade the new broker is the one the unbind reaches', async () => {
  await withLeasedDaemon(async (d, lease) => {
    const r = await d.request({ op: 'upgrade', deadlineMs: UPGRADE_MS });
    assert.equal(r.upgraded, true);
    const pid: number = (await d.request({ op: 'status' })).pid;
    assert.notEqual(pid, d.proc.pid, 'a new broker process');
    const buf = await lease.dma.alloc(8192);
    assert.equal(await roundTrip(lease, buf, 'after the upgrade'), 'after the upgrade');
    await unbindWhileLeased(d, lease, pid);
  });
});
