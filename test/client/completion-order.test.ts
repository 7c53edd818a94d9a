// What a client (and the owner) may rely on once a completion is seen: its SQ slot is free — the client
// counts the completions it collected as consumed slots, since the device stores SQ_HEAD just after the CQE —
// and the owner's counters include it (docs/SA-1.md, "What a completion's phase word promises"). Inject
// completionLag holds the device right after the CQE's phase word, where a loaded machine can preempt it:
// SQ_HEAD and CQ_TAIL show the old values for the whole lag.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BAR0, Q, QP, qcfg } from '../../src/hw/sa1/regs.js';
import { connect, type Lease, Sa1Queue } from '../../src/index.js';
import { type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
let lease: Lease;
before(async () => {
  rig = await startRig({ sim: { numQueues: 2 } });
  lease = await connect({ socket: rig.socket });
});
after(async () => {
  lease?.close();
  await rig?.close();
  await leakCheck();
});

// Below the broker's device response timeout (sa1.responseTimeoutMs, 2 s): a longer lag is a hang to it (an
// owner command behind the lag, a DMA unmap, times out). The checks run within milliseconds of its start.
const LAG_MS = 1500;

/**
 * SQ_HEAD as the device last published it in the lease's queue page. It only moves forward, and the device
 * moves it at the end of the lag: read after a check and still at its value from before the lagged completion,
 * the check ran while the lag was in force. A check that ran after it shows nothing: the test then fails,
 * saying so (a machine too loaded to reach the checks within LAG_MS).
 */
function sqHead(): number {
  return new DataView(lease.region(2).buffer).getUint32(QP.SQ_HEAD, true);
}

test('a full ring whose completions were all seen takes a full batch at once, before the device moves SQ_HEAD', async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  const nops = (n: number) => Array.from({ length: n }, () => ({ opcode: 'NOP' as const }));
  for (const c of await Promise.all(q.submitBatch(nops(7)))) assert.equal(c.status, 'OK');
  // The 8th completion is written, then the device holds before anything else (CQ_TAIL, the interrupt).
  assert.equal(sqHead(), 7);
  await rig.sim.inject({ kind: 'completionLag', ms: LAG_MS });
  assert.equal((await q.nop()).status, 'OK');
  assert.equal(q.inFlight, 0, 'every completion collected');
  assert.equal(q.space, 8, 'every slot of a ring whose completions were all collected is free');
  const batch = q.submitBatch(nops(8)); // the device's SQ_HEAD said 7 here: EAGAIN "submission ring full"
  assert.equal(sqHead(), 7, `the lag (${LAG_MS} ms) ended before the batch went in: nothing was shown`);
  for (const c of await Promise.all(batch)) assert.equal(c.status, 'OK');
  await q.close();
});

test("the owner's Q_COMPLETED and Q_BYTES count a completion the client has seen", async () => {
  const q = await Sa1Queue.create(lease, { entries: 4 });
  const buf = await lease.dma.alloc(4096);
  const at = (r: number) => qcfg(lease.info.queue!, r);
  const completed0 = await rig.device.read64(BAR0, at(Q.COMPLETED));
  const bytes0 = await rig.device.read64(BAR0, at(Q.BYTES));
  const head0 = sqHead();
  await rig.sim.inject({ kind: 'completionLag', ms: LAG_MS });
  assert.equal((await q.fill(buf.iova, 512, 0x5an)).status, 'OK');
  assert.equal(await rig.device.read64(BAR0, at(Q.COMPLETED)), completed0 + 1n, 'Q_COMPLETED counts it');
  assert.equal(await rig.device.read64(BAR0, at(Q.BYTES)), bytes0 + 512n, 'Q_BYTES counts it');
  assert.equal(
    sqHead(),
    head0,
    `the lag (${LAG_MS} ms) ended before the owner read the counters: nothing was shown`,
  );
  await buf.free();
  await q.close();
});
