// Doorbell kicks through the broker (datasheet §2.3 rev 2): a lease's queue
// page region hands out that queue's ioeventfd and nothing else, and
// Sa1Queue kicks a sleeping device, so a NOP after idle is taken on its kick,
// not found by the device's own armed poll (armedPollFinds, counted by the
// device whatever the timing).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BAR2, Q_NOTIFY_KICK_NEEDED, QP } from '../../src/hw/sa1/regs.js';
import { connect, type Lease, Sa1Queue } from '../../src/index.js';
import type { Fd } from '../../src/sys/index.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const STRIDE = 65536;
/** Bound on one NOP: far above the 1 s armed poll, so a lost kick is counted (armedPollFinds), not timed out. */
const NOP_DEADLINE_MS = 20_000;
const leakCheck = trackFdLeaks();
let rig: Rig;
let a: Lease;
let b: Lease;
before(async () => {
  // The device's idle poll is 1 s and the broker's heartbeat check (an owner read, which wakes the device)
  // once a minute: a NOP the kick did not wake the device for is found by the armed poll, and counted.
  rig = await startRig({ sim: { idlePollUs: 1_000_000 }, config: { sa1: { heartbeat_ms: 60_000 } } });
  a = await connect({ socket: rig.socket });
  b = await connect({ socket: rig.socket });
});
after(async () => {
  a?.close();
  b?.close();
  await rig?.close();
  await leakCheck();
});

/** The kernel's id of the eventfd behind `fd` (the same object in every process and dup). */
function eventfdId(fd: Fd): string {
  const m = /eventfd-id:\s*(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd.fd}`, 'utf8'));
  assert.ok(m, `fd ${fd.fd} is an eventfd`);
  return m[1]!;
}

test("a lease's queue page gives its own queue's ioeventfd only, at SQ_TAIL of the lease region", async () => {
  const device = await rig.device.regionIoFds(BAR2);
  try {
    for (const lease of [a, b]) {
      const q = lease.info.queue!;
      const { subRegions, fds } = await lease.client.regionIoFds(BAR2);
      try {
        assert.equal(subRegions.length, 1, 'one sub-region: this lease has one queue page');
        assert.equal(fds.length, 1, 'one fd, none of the other queues');
        assert.equal(subRegions[0]!.offset, BigInt(QP.SQ_TAIL), 'offset in the lease region, not BAR2');
        assert.equal(subRegions[0]!.size, 4n);
        const dev = device.subRegions.find((s) => s.offset === BigInt(q * STRIDE + QP.SQ_TAIL))!;
        assert.equal(eventfdId(fds[0]!), eventfdId(device.fds[dev.fdIndex]!), `queue ${q}'s own eventfd`);
      } finally {
        for (const fd of fds) fd.close();
      }
      const none = await lease.client.regionIoFds(0);
      assert.deepEqual([none.subRegions.length, none.fds.length], [0, 0], 'config/other regions: none');
    }
    assert.notEqual(a.info.queue, b.info.queue);
  } finally {
    for (const fd of device.fds) fd.close();
  }
});

test('Sa1Queue kicks a sleeping device: NOPs after idle are taken on their kick, not by its 1 s armed poll', async () => {
  const q = await Sa1Queue.create(a, { entries: 8 });
  const page = new Int32Array(a.region(BAR2).buffer, 0, 16);
  const kickNeeded = () => (Atomics.load(page, QP.Q_NOTIFY / 4) & Q_NOTIFY_KICK_NEEDED) !== 0;
  const s0 = await rig.sim.stats(); // a command: the device wakes for it, and arms again below
  for (let i = 0; i < 3; i++) {
    await until('the idle device sets KICK_NEEDED', kickNeeded);
    await sleep(20);
    const done = await within(q.nop(), `NOP ${i + 1}`, NOP_DEADLINE_MS);
    assert.equal(done.status, 'OK');
  }
  const s1 = await rig.sim.stats();
  assert.ok(s1.armedSleeps >= s0.armedSleeps + 3, 'the device slept armed before each NOP');
  assert.equal(s1.armedPollFinds, s0.armedPollFinds, 'a NOP was found by the armed poll: its kick was lost');
  await q.close();
});

test('Sa1Queue.post() kicks a sleeping device too: a posted NOP after idle is taken on its kick, not by the armed poll', async () => {
  // post() rings and kicks on its own path (not #ring()'s), for callers that spin.
  const q = await Sa1Queue.create(b, { entries: 8 });
  const page = new Int32Array(b.region(BAR2).buffer, 0, 16);
  const kickNeeded = () => (Atomics.load(page, QP.Q_NOTIFY / 4) & Q_NOTIFY_KICK_NEEDED) !== 0;
  const s0 = await rig.sim.stats();
  for (let i = 0; i < 3; i++) {
    await until('the idle device sets KICK_NEEDED', kickNeeded);
    await sleep(20);
    q.post({ opcode: 'NOP' });
    assert.ok(
      q.spinUntil(() => q.inFlight === 0, BigInt(NOP_DEADLINE_MS) * 1_000_000n),
      `posted NOP ${i + 1} did not complete in ${NOP_DEADLINE_MS} ms`,
    );
    assert.equal(q.postError, 0, 'completed OK (no error status)');
  }
  const s1 = await rig.sim.stats();
  assert.ok(s1.armedSleeps >= s0.armedSleeps + 3, 'the device slept armed before each NOP');
  assert.equal(
    s1.armedPollFinds,
    s0.armedPollFinds,
    'a posted NOP was found by the armed poll: its kick was lost',
  );
  await q.close();
});
