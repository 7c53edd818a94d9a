// The SA-1 queue helper across ring wraps, back-pressure and error statuses.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { DevleaseError } from '../../src/errors.js';
import { BAR0, Q, Q_CTRL, qcfg, STATUS_CODE } from '../../src/hw/sa1/regs.js';
import { connect, DeviceStatusError, type Lease, Sa1Queue } from '../../src/index.js';
import { crc32c } from '../../src/sim/model/crc32c.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
let lease: Lease;
before(async () => {
  rig = await startRig();
  lease = await connect({ socket: rig.socket });
});
after(async () => {
  lease?.close();
  await rig?.close();
  await leakCheck();
});

test('COPY, FILL, CRC32C and WRITE_IMM stay correct across many wraps of a 4-entry ring', async () => {
  const q = await Sa1Queue.create(lease, { entries: 4 });
  const src = await lease.dma.alloc(4096);
  const dst = await lease.dma.alloc(4096);
  for (let i = 0; i < 40; i++) {
    for (let j = 0; j < 256; j++) src.u8[j] = (i * 31 + j) & 0xff;
    const [copy, crc] = await Promise.all([q.copy(src.iova, dst.iova, 256), q.crc32c(src.iova, 256)]);
    assert.equal(copy.status, 'OK');
    assert.deepEqual(dst.u8.subarray(0, 256), src.u8.subarray(0, 256));
    assert.equal(crc.result, crc32c(src.u8.subarray(0, 256)));
    await q.fill(dst.iova + 1024n, 24, BigInt(i) * 0x0101010101010101n);
    assert.ok(dst.u8.subarray(1024, 1048).every((b) => b === (i & 0xff)));
    await q.writeImm(dst.iova + 2048n, BigInt(i));
    assert.equal(new DataView(dst.buffer).getBigUint64(2048, true), BigInt(i));
  }
  await q.close();
});

test('a full submission ring refuses more with EAGAIN (back-pressure) and drains once the device runs', async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  // The owner pauses the queue (Q_CTRL.ENABLE off keeps indexes), so nothing is fetched while we fill the ring.
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  await rig.device.write32(BAR0, ctrl, 0);
  const all = q.submitBatch(Array.from({ length: 8 }, () => ({ opcode: 'NOP' as const })));
  assert.equal(q.space, 0);
  assert.throws(() => q.submitBatch([{ opcode: 'NOP' }]), { code: 'EAGAIN' });
  assert.throws(() => q.submitBatch(Array.from({ length: 9 }, () => ({ opcode: 'NOP' as const }))), {
    code: 'EINVAL',
  });
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
  const done = await Promise.all(all);
  assert.equal(done.length, 8);
  assert.ok(done.every((c) => c.status === 'OK'));
  assert.equal((await q.nop()).status, 'OK', 'room again once completions are consumed');
  await q.close();
});

test('a batch with a descriptor that cannot be written throws and leaves nothing in flight; the queue goes on', async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  // A JavaScript caller's hole in the array: writeSqe throws at the second descriptor, before the doorbell.
  const holed = [{ opcode: 'NOP' }, undefined] as unknown as Parameters<Sa1Queue['submitBatch']>[0];
  assert.throws(() => q.submitBatch(holed), TypeError);
  assert.equal(q.inFlight, 0, 'no promise waits for a descriptor never rung');
  assert.equal(q.space, 8, 'nothing published');
  const [a, b] = q.submitBatch([{ opcode: 'NOP' }, { opcode: 'NOP' }]);
  assert.deepEqual([(await a!).status, (await b!).status], ['OK', 'OK']);
  assert.equal(q.inFlight, 0);
  await q.close();
});

test('post() refuses as submit() does: a full ring with EAGAIN, a closed lease with ERR_DEVLEASE_CLOSED', async () => {
  // post() checks inline (its path runs cold after idle, issue 16): the same refusals, nothing written or rung.
  const q = await Sa1Queue.create(lease, { entries: 4 });
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  await rig.device.write32(BAR0, ctrl, 0); // paused: nothing is fetched while the ring fills
  for (let i = 0; i < 4; i++) q.post({ opcode: 'NOP' });
  assert.equal(q.space, 0);
  assert.throws(() => q.post({ opcode: 'NOP' }), { code: 'EAGAIN' });
  assert.equal(q.inFlight, 4, 'the refused one is not counted');
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
  assert.ok(q.spinUntil(() => q.inFlight === 0));
  assert.equal(q.postError, 0);
  const other = await connect({ socket: rig.socket });
  const q2 = await Sa1Queue.create(other, { entries: 4 });
  other.close();
  assert.throws(() => q2.post({ opcode: 'NOP' }), { code: 'ERR_DEVLEASE_CLOSED' });
  assert.equal(q2.inFlight, 0);
  await q2.close();
  await q.close();
});

test('status errors are typed; a queue in ERROR is reported and recovers after reset()', async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  const buf = await lease.dma.alloc(4096);
  await assert.rejects(q.copy(buf.iova, buf.iova + 2048n, 0), (err: unknown) => {
    assert.ok(err instanceof DeviceStatusError);
    assert.ok(err instanceof DevleaseError, 'one error model: a device status is a DevleaseError');
    assert.equal(err.code, 'BAD_LENGTH');
    assert.equal(err.errno, undefined, 'a device status is not an errno');
    return true;
  });
  assert.equal((await q.nop()).status, 'OK', 'BAD_LENGTH does not stop the queue');
  const outside = lease.info.iovaWindow!.base + lease.info.iovaWindow!.size; // first byte past the window
  await assert.rejects(q.writeImm(outside, 1n), { code: 'WINDOW_VIOLATION' });
  assert.equal(q.error, 3);
  assert.throws(() => q.submit({ opcode: 'NOP' }), { code: 'EIO', message: /ERROR \(WINDOW_VIOLATION\)/ });
  await q.reset();
  assert.equal(q.error, 0);
  assert.equal((await q.nop()).status, 'OK');
  await q.close();
});

test('a fatal completion is ERROR at once, before the device shows it (Q_ERROR written after the completion)', async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  // The device writes the completion and the fault record, then waits 1.5 s before Q_ERROR and Q_STATUS.
  await rig.sim.inject({ kind: 'errorLag', ms: 1500 });
  const outside = lease.info.iovaWindow!.base + lease.info.iovaWindow!.size;
  await assert.rejects(q.writeImm(outside, 1n), { code: 'WINDOW_VIOLATION' });
  assert.equal(q.lastError, 0, 'the device shows no error yet (else this test shows nothing)');
  assert.equal(q.error, 3, 'the completion said WINDOW_VIOLATION: the queue is in ERROR');
  assert.throws(() => q.submit({ opcode: 'NOP' }), { code: 'EIO', message: /ERROR \(WINDOW_VIOLATION\)/ });
  await q.reset();
  assert.equal(q.error, 0);
  assert.equal((await q.nop()).status, 'OK');
  await q.close();
});

test('a completion status the datasheet does not define is its own error, with the raw value', async () => {
  // Keep the rings' memory: the test plays a device that writes a status no SA-1 revision defines.
  const bufs: Awaited<ReturnType<Lease['dma']['alloc']>>[] = [];
  const alloc = lease.dma.alloc.bind(lease.dma);
  lease.dma.alloc = async (...args) => {
    const b = await alloc(...args);
    bufs.push(b);
    return b;
  };
  let q: Sa1Queue;
  try {
    q = await Sa1Queue.create(lease, { entries: 8 });
  } finally {
    lease.dma.alloc = alloc;
  }
  // One buffer holds both rings (one DMA map): the SQ's 8 × 64 bytes, then the CQ.
  const cq = new DataView(bufs[0]!.buffer, 8 * 64);
  // The owner stops the queue, so the real device completes nothing; the descriptor (tag 1) stays pending.
  await rig.device.write32(BAR0, qcfg(lease.info.queue!, Q.CTRL), 0);
  const nop = q.nop();
  cq.setBigUint64(0, 1n, true); // tag
  cq.setUint32(8, 0, true); // result
  cq.setUint16(12, 0x77, true); // status: undefined
  cq.setUint16(14, 1, true); // phase of the first pass
  q.poll();
  await assert.rejects(nop, (err: unknown) => {
    assert.ok(err instanceof DeviceStatusError);
    assert.equal(err.code, 'ERR_DEVLEASE_DEVICE_STATUS_UNKNOWN');
    assert.equal(err.completion.rawStatus, 0x77);
    assert.equal(err.completion.status, 'UNKNOWN');
    assert.match(err.message, /status 0x77, which the SA-1 datasheet does not define/);
    return true;
  });
  await q.reset();
  assert.equal((await q.nop()).status, 'OK', 'the queue runs again after reset');
  await q.close();
});

test("submit()'s promises behind a fatal completion fail with EIO, and a lease closed under them with ERR_DEVLEASE_CLOSED", async () => {
  const q = await Sa1Queue.create(lease, { entries: 8 });
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  await rig.device.write32(BAR0, ctrl, 0); // paused, so both are in the ring before the device looks
  const outside = lease.info.iovaWindow!.base + lease.info.iovaWindow!.size;
  const [fault, behind] = q.submitBatch([{ opcode: 'WRITE_IMM', dst: outside, imm: 1n }, { opcode: 'NOP' }]);
  // Both checked from before the device runs: each rejects as soon as the pump sees it.
  const checked = Promise.all([
    assert.rejects(fault!, { code: 'WINDOW_VIOLATION' }, 'the faulting one with its own status'),
    assert.rejects(behind!, { code: 'EIO', message: /queue entered ERROR: WINDOW_VIOLATION/ }),
  ]);
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
  await checked;
  assert.equal(q.inFlight, 0);
  await q.close();

  const other = await connect({ socket: rig.socket });
  const q2 = await Sa1Queue.create(other, { entries: 8 });
  await rig.device.write32(BAR0, qcfg(other.info.queue!, Q.CTRL), 0); // nothing completes
  const pending = q2.nop();
  other.close();
  await assert.rejects(pending, {
    code: 'ERR_DEVLEASE_CLOSED',
    message: /closed with descriptors in flight/,
  });
  assert.equal(q2.inFlight, 0);
});

test('a completion that never comes fails with ETIMEDOUT naming the queue and the descriptor', async () => {
  await assert.rejects(Sa1Queue.create(lease, { completionTimeoutMs: 0 }), { code: 'EINVAL' });
  const q = await Sa1Queue.create(lease, { entries: 8, completionTimeoutMs: 300 });
  // The owner pauses the queue: the device fetches nothing, as a hung or frozen one would not.
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  await rig.device.write32(BAR0, ctrl, 0);
  const [first, second] = q.submitBatch([{ opcode: 'NOP' }, { opcode: 'COPY', length: 8 }]);
  const queue = lease.info.queue;
  await assert.rejects(first!, (err: Error & { code?: string; errno?: number }) => {
    assert.equal(err.code, 'ETIMEDOUT');
    assert.equal(err.errno, 110);
    assert.match(
      err.message,
      new RegExp(
        `SA-1 queue ${queue} .*descriptor tag \\d+ \\(NOP\\) did not complete within 300 ms \\(and 1 submitted after it\\)`,
      ),
    );
    return true;
  });
  await assert.rejects(second!, { code: 'ETIMEDOUT' });
  assert.equal(q.inFlight, 0);
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
  await q.reset();
  assert.equal((await q.nop()).status, 'OK', 'the queue works again after a reset');
  await q.close();
});

test('post(): a polling caller gets no promise; inFlight counts its descriptors until poll() collects them', async () => {
  const q = await Sa1Queue.create(lease, { entries: 4 });
  const src = await lease.dma.alloc(4096);
  const dst = await lease.dma.alloc(4096);
  for (let i = 0; i < 10; i++) {
    src.u8.fill(i + 1, 0, 256);
    q.post({ opcode: 'COPY', src: src.iova, dst: dst.iova, length: 256, intr: false });
    assert.equal(q.inFlight, 1, 'counted until collected, whether or not the device is done');
    assert.ok(
      q.spinUntil(() => q.inFlight === 0),
      `COPY ${i} collected`,
    );
    assert.ok(dst.u8.subarray(0, 256).every((b) => b === i + 1));
  }
  // Beside submit(): each settles its own way (the promise's pump may collect the post's completion too).
  q.post({ opcode: 'NOP' });
  const nop = q.nop();
  assert.equal((await nop).status, 'OK');
  assert.ok(q.spinUntil(() => q.inFlight === 0));
  // A bad status rejects nothing: it shows in postError once collected; a non-fatal one leaves the queue running.
  assert.equal(q.postError, 0);
  q.post({ opcode: 'COPY', src: src.iova, dst: dst.iova, length: 0 });
  assert.ok(q.spinUntil(() => q.inFlight === 0));
  assert.equal(q.postError, STATUS_CODE.BAD_LENGTH);
  assert.equal(q.error, 0);
  // A fatal one stops the queue: the posts behind it never complete, and stop counting.
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  await rig.device.write32(BAR0, ctrl, 0); // paused, so both are in the ring before the device looks
  const outside = lease.info.iovaWindow!.base + lease.info.iovaWindow!.size;
  q.post({ opcode: 'WRITE_IMM', dst: outside, imm: 1n });
  q.post({ opcode: 'NOP' });
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
  assert.ok(
    q.spinUntil(() => q.inFlight === 0),
    'the NOP behind the fault is not waited for',
  );
  assert.equal(q.error, STATUS_CODE.WINDOW_VIOLATION);
  assert.equal(q.postError, STATUS_CODE.WINDOW_VIOLATION);
  assert.throws(() => q.post({ opcode: 'NOP' }), { code: 'EIO', message: /ERROR \(WINDOW_VIOLATION\)/ });
  await q.reset();
  q.post({ opcode: 'NOP' });
  assert.ok(q.spinUntil(() => q.inFlight === 0));
  assert.equal(q.error, 0);
  assert.equal(q.postError, 0, 'a reset clears it');
  await q.close();
});

test('spinUntil() collects a completion already in the ring, even with no time left to spin', async () => {
  const q = await Sa1Queue.create(lease, { entries: 4 });
  const completed = qcfg(lease.info.queue!, Q.COMPLETED);
  const before = await rig.device.read32(BAR0, completed);
  q.post({ opcode: 'NOP' });
  // Done at the device (Q_COMPLETED is stored just before the completion entry), not yet looked at here.
  await until(
    'the device to complete the NOP',
    async () => (await rig.device.read32(BAR0, completed)) !== before,
  );
  assert.equal(q.inFlight, 1, 'not collected before spinUntil looks');
  assert.ok(
    q.spinUntil(() => q.inFlight === 0, 0n),
    'a zero timeout still looks at the ring',
  );
  assert.equal(q.inFlight, 0);
  // A condition that comes true in the look made as the deadline passes counts: spinUntil says so.
  let looks = 0;
  assert.ok(
    q.spinUntil(() => ++looks >= 4, -1n),
    'true at the deadline is true',
  );
  await q.close();
});

test('close() and reset() reject the descriptors still in flight (ERR_DEVLEASE_CLOSED, ECANCELED), each once', async () => {
  // The rejection is built only when something is pending (issue 16: a close with nothing in flight builds no
  // error); this holds that whatever is pending still gets one.
  const ctrl = qcfg(lease.info.queue!, Q.CTRL);
  const q = await Sa1Queue.create(lease, { entries: 8 });
  await rig.device.write32(BAR0, ctrl, 0); // paused: the descriptors stay in flight
  const reset = q.submitBatch([{ opcode: 'NOP' }, { opcode: 'NOP' }]).map((p) => outcome(p, 'reset()'));
  await q.reset(); // re-programs the rings and enables the queue again
  for (const e of await Promise.all(reset)) assert.equal((e as DevleaseError).code, 'ECANCELED');
  assert.equal(q.inFlight, 0);
  assert.equal((await q.nop()).status, 'OK', 'the queue runs after the reset');
  await rig.device.write32(BAR0, ctrl, 0);
  const closed = q.submitBatch([{ opcode: 'NOP' }, { opcode: 'NOP' }]).map((p) => outcome(p, 'close()'));
  await q.close();
  for (const e of await Promise.all(closed)) {
    assert.ok(e instanceof DevleaseError, `rejected with a DevleaseError, got ${String(e)}`);
    assert.equal(e.code, 'ERR_DEVLEASE_CLOSED');
  }
  await q.close(); // again: nothing pending, nothing thrown
  await rig.device.write32(BAR0, ctrl, Q_CTRL.ENABLE);
});

/** What `p` settles with (its error, or 'done'); an error naming `what` if it never settles (a hang fails). */
function outcome(p: Promise<unknown>, what: string): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const never = new Promise((resolve) => {
    timer = setTimeout(
      () => resolve(new Error(`a descriptor in flight at ${what} was never settled`)),
      10_000,
    );
  });
  return Promise.race([
    p.then(
      () => 'done',
      (e: unknown) => e,
    ),
    never,
  ]).finally(() => clearTimeout(timer));
}
