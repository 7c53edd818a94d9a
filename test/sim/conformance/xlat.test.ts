// SA-1 conformance, rev 2 §2.2 Q_XLAT: every IOVA a queue uses (descriptor
// src/dst, SQ_BASE, CQ_BASE) is checked against the window as the queue sees
// it, then IOVA + Q_XLAT (mod 2^64) goes through the IOMMU; fault records
// carry the IOVA as the queue saw it; Q_XLAT is ignored while the queue is
// enabled, kept by a queue reset, and cleared by a whole-device reset.
// Values typed in from the datasheet (./sa1-spec.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../../helpers/fds.js';
import { type HostRegion, type Rig, rig, until } from '../helpers/real.js';
import { bootRig, faultRecord, qcfg, RawQueue, r32, r64, w32, w64 } from './owner.js';
import { BAR0, CONTROL, OP, Q_CTRL, Q_STATUS, QCFG, REGION, ST } from './sa1-spec.js';

after(trackFdLeaks());

const CONFIG = { numQueues: 4, queueStride: 16384, devmemSize: 1 << 20, devmemGranule: 1 << 16 };
/** Where the owner maps the holder's memory in the device's I/O address space. */
const DEVICE_AT = 0x4000_0000n;
const HOST_SIZE = 1 << 20;
const Q = 2;

async function withHost(fn: (r: Rig, host: HostRegion) => Promise<void>): Promise<void> {
  const r = await rig(CONFIG);
  try {
    await bootRig(r);
    await fn(r, await r.map(DEVICE_AT, HOST_SIZE));
  } finally {
    await r.close();
  }
}

/** A raw queue whose holder sees `host` at `viewAt`, translated by Q_XLAT to where the device mapped it. */
async function translatedQueue(r: Rig, host: HostRegion, viewAt: bigint, window: bigint): Promise<RawQueue> {
  const xlat = BigInt.asUintN(64, host.iova - viewAt);
  await w64(r.client, REGION.bar0, qcfg(Q, QCFG.Q_XLAT), xlat);
  const q = new RawQueue(r.client, {
    q: Q,
    stride: CONFIG.queueStride,
    host: { ...host, iova: viewAt },
    sqAt: 0,
    sqSize: 8,
    cqAt: 0x1000,
    cqSize: 8,
    window: { base: viewAt, size: window },
  });
  await q.configure();
  return q;
}

test('§2.2 Q_XLAT: window checked on the queue IOVA, IOVA + Q_XLAT through the IOMMU, records as the queue saw them', async () => {
  await withHost(async (r, host) => {
    // The holder's view starts at 0; its memory is at DEVICE_AT for the device. The window covers twice
    // the mapped size so that the upper half reaches the IOMMU unmapped.
    const q = await translatedQueue(r, host, 0n, 2n * BigInt(HOST_SIZE));
    await q.submit([
      { opcode: OP.FILL, length: 256, dst: 0x8000n, imm: 0x5a5a_5a5a_5a5a_5a5an, tag: 1n },
      { opcode: OP.COPY, length: 256, src: 0x8000n, dst: 0x9000n, tag: 2n },
    ]);
    const done = await q.reap(2);
    assert.deepEqual(
      done.map((c) => [c.tag, c.status]),
      [
        [1n, ST.OK],
        [2n, ST.OK],
      ],
    );
    assert.ok(
      host.view.subarray(0x8000, 0x8100).every((b) => b === 0x5a),
      'FILL at view 0x8000 = device +0x8000',
    );
    assert.ok(
      host.view.subarray(0x9000, 0x9100).every((b) => b === 0x5a),
      'COPY through the translation',
    );

    let faults = 0;
    const fault = async (
      code: number,
      iova: bigint,
      tag: bigint,
      e: Parameters<RawQueue['submit']>[0][0],
    ) => {
      await q.submit([e]);
      const [c] = await q.reap(1);
      assert.deepEqual([c?.tag, c?.status], [tag, code]);
      faults++;
      await until(
        async () => (await r32(r.client, REGION.bar0, BAR0.FAULT_HEAD)) === faults,
        `fault ${code}`,
      );
      assert.deepEqual(await faultRecord(r.client, faults - 1), { queue: Q, code, reserved: 0, iova });
      assert.equal(((await q.qcfg32(QCFG.Q_STATUS)) >>> Q_STATUS.ERROR_SHIFT) & 0xff, code);
      await q.reset();
      await q.configure();
    };
    // The device's own address of the memory is outside the queue's window: the check is on the queue's IOVA.
    const deviceAddress = DEVICE_AT + 0x8000n;
    await fault(ST.WINDOW_VIOLATION, deviceAddress, 3n, {
      opcode: OP.FILL,
      length: 64,
      dst: deviceAddress,
      tag: 3n,
    });
    // Inside the window, not mapped at IOVA + Q_XLAT: the record has the view address, not DEVICE_AT + it.
    const unmapped = BigInt(HOST_SIZE) + 0x40n;
    await fault(ST.IOMMU_FAULT, unmapped, 4n, {
      opcode: OP.COPY,
      length: 64,
      src: 0n,
      dst: unmapped,
      tag: 4n,
    });
    assert.equal(
      await q.qcfg64(QCFG.Q_XLAT),
      DEVICE_AT,
      'a queue reset keeps Q_XLAT (the queue ran again after it)',
    );
  });
});

test('§2.2 Q_XLAT wraps mod 2^64, is ignored while enabled, and a whole-device reset clears it', async () => {
  await withHost(async (r, host) => {
    // The holder sees its memory above the device's address: Q_XLAT is "negative" (2^64 - 0x1000_0000).
    const view = DEVICE_AT + 0x1000_0000n;
    const q = await translatedQueue(r, host, view, BigInt(HOST_SIZE));
    assert.equal(await q.qcfg64(QCFG.Q_XLAT), 0xffff_ffff_f000_0000n);
    await q.submit([{ opcode: OP.WRITE_IMM, dst: view + 0x2000n, imm: 0x1122_3344_5566_7788n, tag: 1n }]);
    const [c] = await q.reap(1);
    assert.equal(c?.status, ST.OK);
    assert.equal(
      Buffer.from(host.view.buffer, host.view.byteOffset + 0x2000, 8).readBigUInt64LE(),
      0x1122_3344_5566_7788n,
    );

    // While the queue is enabled a write to Q_XLAT is ignored.
    await w64(r.client, REGION.bar0, qcfg(Q, QCFG.Q_XLAT), 0n);
    assert.equal(await q.qcfg64(QCFG.Q_XLAT), 0xffff_ffff_f000_0000n, 'Q_XLAT locked while enabled');
    await w32(r.client, REGION.bar0, qcfg(Q, QCFG.Q_CTRL), 0);
    await w64(r.client, REGION.bar0, qcfg(Q, QCFG.Q_XLAT), 0x1234_5000n);
    assert.equal(await q.qcfg64(QCFG.Q_XLAT), 0x1234_5000n, 'writable once disabled');
    await w32(r.client, REGION.bar0, qcfg(Q, QCFG.Q_CTRL), Q_CTRL.ENABLE);

    await w32(r.client, REGION.bar0, BAR0.CONTROL, CONTROL.RESET);
    await until(
      async () => (await r32(r.client, REGION.bar0, BAR0.CONTROL)) === 0,
      'CONTROL.RESET to read 0',
    );
    assert.equal(await r64(r.client, REGION.bar0, qcfg(Q, QCFG.Q_XLAT)), 0n, 'whole-device reset: Q_XLAT 0');
  });
});
