// Doorbell notification under many sleep/wake cycles (datasheet §2.3 rev 2): a client that rings and kicks
// as Q_NOTIFY asks is never left to the device's armed poll. The device sleeps with KICK_NEEDED set
// between NOPs; the client rings at every point of that sequence (back to back while the device is still
// in its round, just after it armed, while it sleeps). A doorbell the device missed shows as
// armedPollFinds (an armed sleep that ran to its timeout and then found work), whatever the timing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as ds from '../../src/sim/model/datasheet.js';
import { VFIO_PCI_BAR2_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { queueRig } from './helpers/queue-rig.js';
import { openFds } from './helpers/real.js';

const CYCLES = 1200;
/** Bound on one NOP: far above the 1 s armed poll, so a missed kick is counted, not timed out. */
const NOP_DEADLINE_MS = 20_000;

/** Spin (synchronously: the device is another thread) until `pred` or the deadline. */
function spinUntil(pred: () => boolean, what: string, ms: number): void {
  const end = performance.now() + ms;
  while (!pred())
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

test('every kicked NOP is taken by its kick over many sleep/wake cycles: no armed poll finds a doorbell', async () => {
  const before = openFds();
  // An idle poll of 1 s (the longest): a doorbell the kick protocol lost waits ~1 s and is counted.
  const q = await queueRig(1_000_000);
  const { fds } = await q.r.client.regionIoFds(VFIO_PCI_BAR2_REGION_INDEX);
  try {
    await q.tq.configure();
    const kickFd = fds[0]!;
    let kicks = 0;
    for (let i = 0; i < CYCLES; i++) {
      // Where the doorbell lands in the device's idle sequence (round, arm, re-read of SQ_TAIL, sleep).
      switch (i % 5) {
        case 0:
          break; // back to back: the device is still in the round that completed the last one
        case 1:
          await new Promise((r) => setImmediate(r));
          break;
        case 2: {
          const end = performance.now() + (i % 7) * 0.01; // 0..60 µs
          while (performance.now() < end) {}
          break;
        }
        case 3:
          spinUntil(q.kickNeeded, 'KICK_NEEDED', NOP_DEADLINE_MS); // ring just after it armed
          break;
        case 4:
          await sleep(1); // asleep
          break;
      }
      if (q.nop(BigInt(i + 1), kickFd)) kicks++;
      spinUntil(() => q.tq.peek(i) !== null, `NOP ${i + 1} of ${CYCLES}`, NOP_DEADLINE_MS);
      assert.equal(q.tq.peek(i)?.status, ds.ST_OK);
      q.tq.cqHead = i + 1;
      Atomics.store(q.words, ds.QP_CQ_HEAD / 4, q.tq.cqHead);
    }
    const stats = await q.r.sim.stats();
    assert.ok(kicks > 0 && stats.armedSleeps > 0, `the device slept armed and was kicked (${kicks} kicks)`);
    assert.equal(stats.armedPollFinds, 0, 'a doorbell was found by the armed poll: its kick was lost');
  } finally {
    for (const fd of fds) fd.close();
    await q.close();
  }
  assert.equal(openFds(), before);
});
