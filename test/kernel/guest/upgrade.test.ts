// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// A broker upgrade on the kernel backend: a `devlease daemon` owns edu through
// kernel VFIO (iommufd + cdev, or the legacy type1 container); this process
// holds an edu `dma` lease with a DMA mapping and runs edu DMAs through it
// before and after `devlease upgrade`. The DMA must land both times on the
// same lease and connection, the new broker must hold the device (the old
// one gone), and the pinned-page accounting must be where the broker says
// (iommufd: moved with IOMMU_IOAS_CHANGE_PROCESS — VmPin of the new process;
// type1: stays with the old, gone, process). A new broker that fails after
// adopting the device rolls back: the old one keeps it and DMA still lands.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect, type Lease } from '../../../src/client/index.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { Daemon, roundTrip, until } from './fixtures/daemon.js';
import { guestConfig as config, inEduGuest } from './fixtures/guest.js';

/** A new broker's start under TCG takes many seconds: the upgrade's deadline is generous. */
const UPGRADE_MS = 150_000;

after(trackFdLeaks());

/**
 * kB charged to `pid`'s mm: VmPin (mm->pinned_vm: iommufd charges every pinned page there) or VmLck
 * (mm->locked_vm: type1 charges its pins there).
 */
function vmKb(pid: number, field: 'VmPin' | 'VmLck'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, `/proc/${pid}/status has no ${field} line`);
  return Number(m[1]);
}

/** Whether `pid` still holds an fd of /dev/iommu or /dev/vfio (it is gone, or let go of the device). */
function holdsVfio(pid: number): boolean {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false; // the process is gone
  }
  return fds.some((f) => {
    try {
      const l = readlinkSync(`/proc/${pid}/fd/${f}`);
      return l.startsWith('/dev/iommu') || l.startsWith('/dev/vfio');
    } catch {
      return false;
    }
  });
}

inEduGuest();

test('upgrade with an edu lease holding a DMA mapping: DMA lands after it, same lease and connection, new broker owns the device', async () => {
  const d = new Daemon();
  await d.start();
  let lease: Lease | null = null;
  try {
    const s0 = await d.request({ op: 'status' });
    assert.equal(s0.upgrades, 0);
    const oldPid: number = s0.pid;
    lease = await connect({ socket: d.dma });
    let disconnected = 0;
    for (const ev of ['disconnected', 'revoked', 'revoke-requested', 'device-reset'])
      lease.on(ev, () => disconnected++);
    const leaseId = lease.info.lease;
    const buf = await lease.dma.alloc(8192);
    assert.equal(await roundTrip(lease, buf, 'before the upgrade'), 'before the upgrade');
    const field = config === 'iommufd' ? 'VmPin' : 'VmLck';
    const pinnedBefore = vmKb(oldPid, field);
    assert.ok(
      pinnedBefore >= 8,
      `the old broker has the 8 KiB mapping charged (${field} ${pinnedBefore} kB)`,
    );

    // A rollback first: a new broker that adopts the device (probes its maps) then fails to start.
    const bad = join(d.dir, 'bad.toml');
    writeFileSync(bad, '[device]\ndriver = "./no-such-driver.js"\n');
    await assert.rejects(
      d.request({ op: 'upgrade', config: bad, deadlineMs: UPGRADE_MS }),
      /rolled back: the new broker refused the state: .*no-such-driver/,
    );
    assert.equal((await d.request({ op: 'status' })).pid, oldPid, 'the old broker carries on');
    assert.equal(await roundTrip(lease, buf, 'after a rollback'), 'after a rollback');

    const r = await d.request({ op: 'upgrade', deadlineMs: UPGRADE_MS });
    assert.equal(r.upgraded, true);
    // Reported, not asserted (tests check behaviour; the bench measures): the hold under TCG emulation.
    console.log(`${config}: the upgrade held the control plane ${Math.round(r.pausedMs)} ms (TCG guest)`);
    const s1 = await d.request({ op: 'status' });
    assert.equal(s1.upgrades, 1);
    assert.notEqual(s1.pid, oldPid, 'a new broker process');
    await until('the old broker to let go of the device', () => !holdsVfio(oldPid), 30_000);
    assert.ok(holdsVfio(s1.pid), 'the new broker holds the VFIO device');

    assert.equal(await roundTrip(lease, buf, 'after the upgrade lands'), 'after the upgrade lands');
    const leases = (await d.request({ op: 'leases' })) as { id: string }[];
    assert.deepEqual(
      leases.map((l) => l.id),
      [leaseId],
      'the same lease, not a new one',
    );
    assert.equal(disconnected, 0, 'the client saw no disconnect, revoke or reset');

    const pinnedAfter = vmKb(s1.pid, field);
    if (config === 'iommufd') {
      assert.match(s1.pinnedAccounting ?? '', /^moved to pid \d+ \(IOMMU_IOAS_CHANGE_PROCESS, 1 maps\)/);
      assert.ok(
        pinnedAfter >= 8,
        `the new broker's VmPin (${pinnedAfter} kB) carries the 8 KiB mapping after IOMMU_IOAS_CHANGE_PROCESS`,
      );
    } else {
      assert.match(s1.pinnedAccounting ?? '', /^stayed with the previous broker process \(1 maps\): type1/);
      assert.equal(pinnedAfter, 0, "type1 charged the handed map to the old broker's mm: none of it is here");
    }
    // A map the new broker makes is charged to it, on either path.
    const b3 = await lease.dma.alloc(8192);
    assert.ok(vmKb(s1.pid, field) >= pinnedAfter + 8, `a new 8 KiB map adds to the new broker's ${field}`);
    await b3.free();

    // Unmapping in the new broker works (the IOMMU entry goes), and a new mapping DMAs too.
    await buf.free();
    const buf2 = await lease.dma.alloc(8192);
    assert.equal(
      await roundTrip(lease, buf2, 'a map made by the new broker'),
      'a map made by the new broker',
    );
    await buf2.free();
  } catch (err) {
    throw Object.assign(err as Error, { message: `${(err as Error).message}\nbroker output:\n${d.out}` });
  } finally {
    lease?.close();
    await d.stop();
  }
});
