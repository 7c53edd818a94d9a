// Isolation between lease holders: separate queue pages, DMA only inside the
// lease's window, and the device stopping a queue that aims outside it.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

let rig: Rig;
let a: ClientProc;
let b: ClientProc;
let infoA: any;
let infoB: any;
const leakCheck = trackFdLeaks();

before(async () => {
  rig = await startRig();
  [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
  infoA = (await a.call('connect', { socket: rig.socket })).info;
  infoB = (await b.call('connect', { socket: rig.socket })).info;
});

after(async () => {
  await Promise.all([a?.exit(), b?.exit()]);
  await rig?.close();
  await leakCheck();
});

/** Where the device has a lease's memory (a translated view hides it from the client). */
const deviceBase = (pid: number): bigint =>
  rig.broker.leases.all().find((l) => l.ctx.pid === pid)!.resources.window!.base;

test('two clients get different queues, pages and device ranges, each its own IOVA view, with its isolation', () => {
  assert.equal(infoA.kind, 'queue');
  assert.notEqual(infoA.queue, infoB.queue);
  // Each sees [0, 4 GiB) (sa1.iova_view = "translated" by default), placed at distinct device ranges.
  for (const info of [infoA, infoB]) {
    assert.deepEqual(info.iovaWindow, { base: '0x0', size: '0x100000000' });
    assert.equal(info.iovaView.mode, 'translated');
  }
  assert.notEqual(deviceBase(a.pid), deviceBase(b.pid));
  assert.equal(infoA.isolation.queuePage.level, 'enforced');
  assert.equal(infoA.isolation.iovaWindow.level, 'enforced');
  assert.equal(infoA.isolation.interrupts.level, 'enforced');
  const leases = rig.broker.leases.all();
  assert.equal(leases.length, 2);
  assert.deepEqual(new Set(leases.map((l) => l.ctx.pid)), new Set([a.pid, b.pid]));
});

test("neither client can reach the other's page: its mapping is its page alone", async () => {
  const stride = 65536;
  assert.equal(await a.call('pageLength'), stride);
  assert.equal(await b.call('pageLength'), stride);
  // The reserved part of a page is plain memory: a marker written by A is seen by A only.
  await a.call('pageWrite', { offset: 0x1000, value: 0xa11ce });
  await b.call('pageWrite', { offset: 0x1000, value: 0xb0b });
  assert.equal(await a.call('pageRead', { offset: 0x1000 }), 0xa11ce);
  assert.equal(await b.call('pageRead', { offset: 0x1000 }), 0xb0b);
  // Past the end of the page there is nothing to reach.
  await assert.rejects(a.call('pageRead', { offset: stride }), /offset|bounds|range/i);
});

test('a DMA_MAP outside the lease window is refused with the reason', async () => {
  const outside = BigInt(infoA.iovaWindow.base) + BigInt(infoA.iovaWindow.size); // past A's view
  const err = (await a
    .call('rawMap', { iova: `0x${outside.toString(16)}`, size: 4096 })
    .catch((e) => e)) as Error & {
    code?: string;
  };
  assert.ok(err instanceof Error, 'the map must be refused');
  assert.equal(err.code, 'EPERM');
  assert.match(err.message, /outside the lease's IOVA view \[0x0, \+0x100000000\)/);
  const unaligned = BigInt(infoA.iovaWindow.base) + 100n;
  const err2 = (await a
    .call('rawMap', { iova: `0x${unaligned.toString(16)}`, size: 4096 })
    .catch((e) => e)) as Error & {
    code?: string;
  };
  assert.equal(err2.code, 'EINVAL');
  assert.match(err2.message, /multiples of the 4096-byte page/);
});

test("descriptors aimed at another client's memory stop that queue only (WINDOW_VIOLATION)", async () => {
  await a.call('queue');
  await b.call('queue');
  await b.call('alloc', { name: 'src', size: 4096 });
  const dstB = (await b.call('alloc', { name: 'dst', size: 4096 })).iova;
  const srcA = (await a.call('alloc', { name: 'src', size: 4096 })).iova;
  // A copies into B's buffer at the device's address of it: outside A's view, so the device refuses before
  // translating, and A's queue goes to ERROR. (B's own view address names A's memory when A uses it.)
  const dstBOnDevice = `0x${(deviceBase(b.pid) + BigInt(dstB)).toString(16)}`;
  const r = await a.call('submit', { desc: { opcode: 'COPY', src: srcA, dst: dstBOnDevice, length: 64 } });
  assert.equal(r.status, 'WINDOW_VIOLATION');
  // The device shows ERROR on the queue page just after the completion (docs/SA-1.md): wait for it.
  await until("Q_ERROR 3 (WINDOW_VIOLATION) on A's queue page", async () => (await a.call('qError')) === 3);
  // B's data is untouched and B keeps working.
  await b.call('fill', { name: 'src', value: 7, length: 64 });
  const srcB = (await b.call('alloc', { name: 'src2', size: 4096 })).iova;
  await b.call('fill', { name: 'src2', value: 9, length: 64 });
  const ok = await b.call('submit', { desc: { opcode: 'COPY', src: srcB, dst: dstB, length: 64 } });
  assert.equal(ok.status, 'OK');
  assert.deepEqual(await b.call('readBuf', { name: 'dst', length: 64 }), Array(64).fill(9));
  // A was told through devlease's notice irq (never ERR: a queue fault is recoverable), the fault in its info.
  const lease = rig.broker.leases.all().find((l) => l.ctx.pid === a.pid)!;
  await until("the fault to reach A's lease", () => lease.faults.some((f) => f.name === 'WINDOW_VIOLATION'));
  assert.ok(!rig.broker.leases.all().find((l) => l.ctx.pid === b.pid)!.faults.length, 'B saw no fault');
});
