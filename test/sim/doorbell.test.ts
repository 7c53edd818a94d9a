// Doorbell notification (datasheet §2.3 rev 2) on the real simulator:
// GET_REGION_IO_FDS hands out one ioeventfd per queue page, an idle device
// sets Q_NOTIFY.KICK_NEEDED, a kick wakes it, a client that never kicks is
// still served. A kick that did not wake the device shows as its armed poll
// finding the doorbell (armedPollFinds), whatever the timing.
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as ds from '../../src/sim/model/datasheet.js';
import type { Fd } from '../../src/sys/index.js';
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { vfio_user_region_io_fds_request } from '../../src/vfio/user/messages.js';
import { VFIO_USER_DEVICE_GET_REGION_IO_FDS } from '../../src/vfio/user/protocol.js';
import { decodeRegionIoFdsReply, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';
import { queueRig } from './helpers/queue-rig.js';
import { openFds, rig, until } from './helpers/real.js';

const STRIDE = 65536;
/** Bound on one kicked NOP: far above the 1 s armed poll, so a lost kick is counted, not timed out. */
const NOP_DEADLINE_MS = 20_000;

function closeAll(fds: Fd[]): void {
  for (const fd of fds) fd.close();
}

test('GET_REGION_IO_FDS: one eventfd per queue page at its SQ_TAIL; other regions none; bad requests EINVAL', async () => {
  const before = openFds();
  const r = await rig({ numQueues: 4 });
  try {
    const { subRegions, fds } = await r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
    assert.equal(subRegions.length, 4);
    assert.equal(fds.length, 4, 'one fd per queue page, none shared');
    subRegions.forEach((s, q) => {
      assert.equal(s.offset, BigInt(q * STRIDE + ds.QP_SQ_TAIL), `queue ${q} sub-region is its SQ_TAIL`);
      assert.equal(s.size, 4n);
      assert.equal(s.type, VFIO_USER_IO_FD_TYPE_IOEVENTFD);
      assert.equal(s.flags, 0, 'no datamatch');
      assert.equal(readlinkSync(`/proc/self/fd/${fds[s.fdIndex]!.fd}`), 'anon_inode:[eventfd]');
    });
    assert.equal(new Set(subRegions.map((s) => s.fdIndex)).size, 4);
    closeAll(fds);

    const bar0 = await r.client.regionIoFds(VFIO_PCI_BAR0_REGION_INDEX);
    assert.deepEqual([bar0.subRegions.length, bar0.fds.length], [0, 0], 'BAR0 has no io fds');

    // argsz too small for the entries: the head alone says how much is needed, and no fds come.
    const small = await r.client.request(
      VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      vfio_user_region_io_fds_request.encode({ argsz: 16, index: 2 }),
    );
    const head = decodeRegionIoFdsReply(small.payload);
    assert.deepEqual([head.argsz, head.count, head.subRegions, small.fds.length], [16 + 4 * 40, 4, null, 0]);

    for (const bad of [{ flags: 1 }, { count: 1 }, { index: 99 }]) {
      await assert.rejects(
        r.client.request(
          VFIO_USER_DEVICE_GET_REGION_IO_FDS,
          vfio_user_region_io_fds_request.encode({ argsz: 256, index: 2, ...bad }),
        ),
        { code: 'EINVAL' },
        JSON.stringify(bad),
      );
    }
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every io fd was closed');
});

test('an idle device sets KICK_NEEDED; a kick wakes it, not its (1 s) armed poll', async () => {
  const before = openFds();
  const q = await queueRig(1_000_000);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    // The first KICK_NEEDED may be the front end's, stored with the enable for a device that then wakes to
    // take it (and clears it): one NOP, then the device's own, set as it goes to sleep after serving it.
    await until(q.kickNeeded, 'KICK_NEEDED on the enabled queue', 5000);
    q.nop(1n, fds[0]!);
    await until(() => q.tq.peek(0) !== null, 'the first NOP completes', 5000);
    const s0 = await q.r.sim.stats(); // a command: the device wakes for it (clearing the flag) and arms again
    await until(q.kickNeeded, 'KICK_NEEDED on the idle, enabled queue', 5000);
    assert.equal(q.nop(2n, fds[0]!), true, 'the sleeping device asked for a kick');
    await until(() => q.tq.peek(1) !== null, 'the kicked NOP completes', NOP_DEADLINE_MS);
    assert.equal(q.tq.peek(1)?.status, ds.ST_OK);
    const s1 = await q.r.sim.stats();
    assert.ok(s1.armedSleeps > s0.armedSleeps, 'the device slept armed');
    assert.equal(
      s1.armedPollFinds,
      s0.armedPollFinds,
      'the armed poll found the NOP: the kick did not wake the device',
    );
    await until(q.kickNeeded, 'KICK_NEEDED set again once idle', 5000);
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

test('a client that never kicks is still served (kick fds handed out, default idle poll)', async () => {
  const before = openFds();
  const q = await queueRig(50);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    await until(q.kickNeeded, 'KICK_NEEDED on the idle queue', 5000);
    for (let i = 1; i <= 3; i++) {
      q.nop(BigInt(i), null);
      await until(() => q.tq.peek(i - 1) !== null, `un-kicked NOP ${i} completes`, 5000);
    }
    assert.ok((await q.r.sim.stats()).armedSleeps > 0, 'the device slept armed in between');
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

// --armed-poll-us: how long a device asleep on its kick fds waits before it polls anyway. Counted, not timed:
// every wake-up that finds nothing ends in one armed sleep, so over a quiet 300 ms a 1 s interval allows the two
// wake-ups the stats commands cause (and one more at most), where the 10 ms default would show some thirty.
// A loaded machine only wakes the device less often.
test('--armed-poll-us: the armed device polls at that interval (1 s: a few armed sleeps in 300 ms, not ~30); an un-kicked doorbell is still served', async () => {
  const before = openFds();
  const q = await queueRig(50, {}, { armedPollUs: 1_000_000 });
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    await q.untilAsleepArmed(q.kickNeeded, 'the device asleep armed');
    const t0 = performance.now();
    const s0 = await q.r.sim.stats();
    await sleep(300);
    const s1 = await q.r.sim.stats();
    // A loaded machine may stretch the window past 300 ms: one more armed sleep allowed per second it lasted.
    const allowed = 3 + Math.floor((performance.now() - t0) / 1000);
    const armed = s1.armedSleeps - s0.armedSleeps;
    assert.ok(
      armed <= allowed,
      `${armed} armed sleeps in the window: the device did not sleep its 1 s armed interval`,
    );
    q.nop(1n, null);
    await until(() => q.tq.peek(0) !== null, 'the un-kicked NOP completes (found by the armed poll)', 10_000);
    assert.ok((await q.r.sim.stats()).armedPollFinds > s1.armedPollFinds, 'found by the armed poll');
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

// Kick fds asked for but never sent must leave the device on its idle poll (50 µs here), never the armed poll
// (10 ms) that assumes somebody can kick: a head-only reply carries none; then the fds sent for real.
test('kick fds asked for but not sent (a head-only reply: argsz too small): the device never sleeps armed; once sent, it does', async () => {
  const before = openFds();
  const q = await queueRig(50);
  try {
    const small = await q.r.client.request(
      VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      vfio_user_region_io_fds_request.encode({ argsz: 16, index: 2 }),
    );
    assert.equal(small.fds.length, 0);
    await q.tq.configure();
    const slept = (await q.r.sim.stats()).sleeps;
    await until(async () => (await q.r.sim.stats()).sleeps > slept + 20, 'the device sleeps idle', 5000);
    assert.equal((await q.r.sim.stats()).armedSleeps, 0, 'no armed sleep while nobody holds a kick fd');
    q.nop(1n, null);
    await until(() => q.tq.peek(0) !== null, 'an un-kicked NOP completes', 5000);
    const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
    try {
      await until(async () => (await q.r.sim.stats()).armedSleeps > 0, 'armed sleeps once fds are out', 5000);
    } finally {
      closeAll(fds);
    }
  } finally {
    await q.close();
  }
  assert.equal(openFds(), before);
});

// A client that takes fewer fds per message than the device has queues (here 2 of 4; behind a broker, 253 of a
// 1,024-queue simulator) gets every queue's sub-region, the fds shared: queue q's names fd q mod 2. Refused with
// ENOSPC instead (until issue 16's twenty-sixth pass), nobody could kick and the device never slept armed.
test('a client taking 2 fds per message gets all 4 queues over 2 shared fds; a kick on a shared fd wakes the device', async () => {
  const before = openFds();
  const q = await queueRig(1_000_000, { capabilities: { max_msg_fds: 2 } });
  let fds: Fd[] = [];
  try {
    const io = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
    fds = io.fds;
    const { subRegions } = io;
    assert.equal(fds.length, 2, 'as many fds as the client takes');
    assert.deepEqual(
      subRegions.map((s) => [s.offset, s.fdIndex]),
      [0, 1, 2, 3].map((n) => [BigInt(n * STRIDE + ds.QP_SQ_TAIL), n % 2]),
      "every queue's SQ_TAIL, queue q on fd q mod 2",
    );
    for (const fd of fds) assert.equal(readlinkSync(`/proc/self/fd/${fd.fd}`), 'anon_inode:[eventfd]');
    const q3 = await q.queue(3);
    await q3.tq.configure();
    const s0 = await q.r.sim.stats();
    await q.untilAsleepArmed(q3.kickNeeded, 'the device asleep on its kick fds (queue 3 armed)');
    const kickFd = fds[subRegions[3]!.fdIndex]!;
    assert.equal(q3.nop(1n, kickFd), true, "queue 3's doorbell kicks its (shared) fd");
    await until(() => q3.tq.peek(0) !== null, 'the kicked NOP on queue 3 completes', NOP_DEADLINE_MS);
    assert.equal(q3.tq.peek(0)?.status, ds.ST_OK);
    const s1 = await q.r.sim.stats();
    assert.ok(s1.armedSleeps > s0.armedSleeps, 'the device slept armed: the fds were handed out');
    assert.equal(
      s1.armedPollFinds,
      s0.armedPollFinds,
      'the armed poll found the NOP: the kick on the shared fd did not wake the device',
    );
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

test('a queue enabled while the device sleeps on its kick fds asks for a kick from the enable on; its first NOP is kicked', async () => {
  const before = openFds();
  const q = await queueRig(1_000_000);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    const s0 = await q.r.sim.stats();
    await q.untilAsleepArmed(q.kickNeeded, 'the device asleep on its kick fds (queue 0 armed)');
    // The enable does not wake the device (no round re-arms the queues): the front end stores KICK_NEEDED
    // in the new queue's page before answering it, so its holder's first doorbell wakes the device.
    const q1 = await q.queue(1);
    await q1.tq.configure();
    assert.equal(q1.kickNeeded(), true, "queue 1's page asks for a kick as soon as the enable is answered");
    assert.equal(q1.nop(1n, fds[1]!), true, 'the first doorbell kicks');
    await until(() => q1.tq.peek(0) !== null, 'the kicked NOP on the new queue completes', NOP_DEADLINE_MS);
    assert.equal(q1.tq.peek(0)?.status, ds.ST_OK);
    assert.equal(
      (await q.r.sim.stats()).armedPollFinds,
      s0.armedPollFinds,
      'the armed poll found the NOP: the first kick of the new queue did not wake the device',
    );
    await until(q1.kickNeeded, 'KICK_NEEDED set again once idle', 5000);
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});

test('a queue enabled on a spinning device (idle poll 0) after the kick fds are out does not ask for kicks', async () => {
  const before = openFds();
  const q = await queueRig(0);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    // The front end stores KICK_NEEDED in the page of a queue enabled once kick fds are out; the device,
    // awake when it takes the enable, clears it. A spinning device never arms, so left set it would stay set
    // and every doorbell of this holder would kick.
    const q1 = await q.queue(1);
    await q1.tq.configure();
    await until(() => !q1.kickNeeded(), "the awake device clears the new queue's KICK_NEEDED", 5000);
    for (let i = 1n; i <= 3n; i++) {
      assert.equal(q1.nop(i, fds[1]!), false, `doorbell ${i} rings without a kick`);
      await until(() => q1.tq.peek(Number(i) - 1) !== null, `NOP ${i} completes`, 5000);
    }
    assert.equal(q1.kickNeeded(), false, 'still no kick asked for');
  } finally {
    closeAll(fds);
    await q.close();
  }
  assert.equal(openFds(), before);
});
