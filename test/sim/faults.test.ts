// Queue faults: every error status with its fault record and interrupt;
// windows (rings included); IOMMU faults, also after DMA_UNMAP with
// descriptors in flight; aborts on disable and reset (none written while bus
// master is clear). The device-wide faults
// (firmware, hang, injection, stuck reset, the fault log ring) are
// device-faults.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../../src/vfio/uapi/pci-regs.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import { BAR0, CONFIG, qcfg, r32, w32, w64 } from './helpers/driver.js';
import { expectQueueError, faultVector, lastFault } from './helpers/fault-log.js';
import { booted, HOST_IOVA, queue } from './helpers/scenario.js';

const DATA = 0x8_0000;
const at = (off: number): bigint => HOST_IOVA + BigInt(off);

test('WINDOW_VIOLATION: completion, fault record, fault vector, queue ERROR until queue reset (windows kept)', async () => {
  const p = await booted();
  const win = { base: HOST_IOVA, size: 0x1_0000n };
  const tq = await queue(p, 1, { window: win, ringOffset: 0 });
  await tq.submit([
    { opcode: ds.OP_COPY, length: 16, src: at(0x1_0000 - 8), dst: at(0x8000), tag: 1n },
    { opcode: ds.OP_NOP, tag: 2n },
  ]);
  const [c] = await tq.reap(1);
  assert.deepEqual([c?.tag, c?.status], [1n, ds.ST_WINDOW_VIOLATION]);
  assert.deepEqual(await lastFault(p), { queue: 1, code: ds.ST_WINDOW_VIOLATION, iova: at(0x1_0000) });
  assert.equal(faultVector(p), 1);
  await expectQueueError(p, 1, ds.ST_WINDOW_VIOLATION);
  p.dev.runUntilIdle();
  assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 1, 'an ERROR queue fetches nothing');
  assert.equal((await r32(p.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_FAULT_PENDING, ds.STATUS_FAULT_PENDING);
  await w32(p.bus, BAR0, ds.REG_FAULT_ACK, await r32(p.bus, BAR0, ds.REG_FAULT_HEAD));
  assert.equal((await r32(p.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_FAULT_PENDING, 0, 'ACK == HEAD clears it');

  await w32(p.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_RESET);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_CTRL)), 0, 'RESET reads 0 when done; ENABLE cleared');
  assert.equal(
    await r32(p.bus, BAR0, qcfg(1, ds.Q_STATUS)),
    ds.Q_STATUS_IDLE,
    'ERROR and last error cleared',
  );
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_WIN_SIZE)), 0x1_0000, 'window kept');
  assert.equal(await tq.pageRead32(ds.QP_SQ_BASE), 0, 'ring registers zeroed');
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_COMPLETED)), 0);
});

test('window violations on the rings write only a fault record (SQ and CQ)', async () => {
  for (const ring of ['sq', 'cq'] as const) {
    const p = await booted();
    // Window covers the SQ only (first 512 bytes) or the CQ only.
    const win = ring === 'sq' ? { base: HOST_IOVA + 512n, size: 4096n } : { base: HOST_IOVA, size: 512n };
    const tq = await queue(p, 0, { ringOffset: 0, window: win });
    await tq.submit([{ opcode: ds.OP_NOP }]);
    p.dev.runUntilIdle();
    const f = await lastFault(p);
    assert.deepEqual([f.queue, f.code], [0, ds.ST_WINDOW_VIOLATION], ring);
    assert.equal(f.iova, ring === 'sq' ? HOST_IOVA : HOST_IOVA + 512n, `${ring}: first address outside`);
    assert.equal(tq.peek(0), null, `${ring}: no completion written`);
    await expectQueueError(p, 0, ds.ST_WINDOW_VIOLATION);
    assert.equal(faultVector(p), 1);
  }
});

test('Q_WIN_SIZE 0 lets a queue touch no host memory', async () => {
  const p = await booted();
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0n } });
  await tq.submit([{ opcode: ds.OP_NOP }]);
  p.dev.runUntilIdle();
  assert.equal((await lastFault(p)).code, ds.ST_WINDOW_VIOLATION);
});

test('windows changed while a queue is disabled (not reset) apply when it is enabled again', async () => {
  const p = await booted();
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x1_0000n }, ringOffset: 0 });
  const copy = (tag: bigint) => ({ opcode: ds.OP_COPY, length: 16, src: at(0x2_0000), dst: at(0x100), tag });
  await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
  assert.equal((await tq.reap(1))[0]?.status, ds.ST_OK);
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), 0);
  await w64(p.bus, BAR0, qcfg(0, ds.Q_WIN_SIZE), 0x4_0000n);
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
  await tq.submit([copy(2n)]);
  assert.deepEqual(
    (await tq.reap(1)).map((c) => [c.tag, c.status]),
    [[2n, ds.ST_OK]],
    'the wider window is in force: src at +0x20000 is inside it',
  );
});

test('a window moved or shrunk off the latched rings while the queue is disabled: WINDOW_VIOLATION at re-enable, nothing fetched or written outside it', async () => {
  // The rings (SQ 512 bytes, CQ right after) at HOST_IOVA, inside the first window; the second leaves out
  // the SQ (moved) or the CQ (shrunk to the SQ alone).
  const cases = [
    { name: 'moved', win: { base: HOST_IOVA + 0x1_0000n, size: 0x1_0000n }, at: HOST_IOVA },
    { name: 'shrunk', win: { base: HOST_IOVA, size: 512n }, at: HOST_IOVA + 512n },
  ];
  for (const c of cases) {
    const p = await booted();
    const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x1_0000n }, ringOffset: 0 });
    await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
    assert.equal((await tq.reap(1))[0]?.status, ds.ST_OK, `${c.name}: rings latched inside the window`);
    await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), 0);
    await w64(p.bus, BAR0, qcfg(0, ds.Q_WIN_BASE), c.win.base);
    await w64(p.bus, BAR0, qcfg(0, ds.Q_WIN_SIZE), c.win.size);
    await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
    const faultsBefore = faultVector(p);
    await tq.submit([{ opcode: ds.OP_NOP, tag: 2n }]);
    p.dev.runUntilIdle();
    assert.equal(tq.peek(1), null, `${c.name}: no completion written outside the window`);
    assert.equal(await tq.pageRead32(ds.QP_SQ_HEAD), 1, `${c.name}: no SQ entry fetched`);
    assert.equal(await tq.pageRead32(ds.QP_CQ_TAIL), 1, `${c.name}: CQ_TAIL not advanced`);
    assert.deepEqual(
      await lastFault(p),
      { queue: 0, code: ds.ST_WINDOW_VIOLATION, iova: c.at },
      `${c.name}: the first ring address outside the new window`,
    );
    await expectQueueError(p, 0, ds.ST_WINDOW_VIOLATION);
    assert.equal(faultVector(p), faultsBefore + 1, `${c.name}: the fault vector fired once`);
  }
});

test('IOMMU_FAULT: unmapped IOVA inside the window, and a write through a read-only map', async () => {
  const p = await booted();
  const ro = p.map(0x40_0000n, 4096, { read: true, write: false });
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  await tq.submit([{ opcode: ds.OP_FILL, length: 8, dst: 0x30_0000n, tag: 5n }]);
  const [c] = await tq.reap(1);
  assert.deepEqual([c?.tag, c?.status], [5n, ds.ST_IOMMU_FAULT]);
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_IOMMU_FAULT, iova: 0x30_0000n });
  await expectQueueError(p, 0, ds.ST_IOMMU_FAULT);

  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_RESET);
  const tq2 = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  ro.view[0] = 42;
  await tq2.submit([
    { opcode: ds.OP_COPY, length: 1, src: ro.iova, dst: at(DATA), tag: 6n },
    { opcode: ds.OP_WRITE_IMM, dst: ro.iova + 8n, imm: 1n, tag: 7n },
  ]);
  const done = await tq2.reap(2);
  assert.deepEqual(
    done.map((x) => x.status),
    [ds.ST_OK, ds.ST_IOMMU_FAULT],
    'read allowed, write refused',
  );
  assert.equal(p.host.view[DATA], 42);
  assert.equal(ro.view[8], 0, 'read-only memory untouched');
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_IOMMU_FAULT, iova: ro.iova + 8n });
});

test('DEVMEM_VIOLATION: a BAR4 range outside [Q_MEM_BASE, +Q_MEM_SIZE)', async () => {
  const p = await booted();
  const tq = await queue(p, 3);
  await w32(p.bus, BAR0, qcfg(3, ds.Q_CTRL), 0);
  await w32(p.bus, BAR0, qcfg(3, ds.Q_MEM_BASE), 0x1_0000);
  await w32(p.bus, BAR0, qcfg(3, ds.Q_MEM_SIZE), 0x1_0000);
  await w32(p.bus, BAR0, qcfg(3, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
  await tq.submit([
    { opcode: ds.OP_WRITE_IMM, flags: ds.FLAG_DST_DEVMEM, dst: 0x1_0000n, imm: 1n, tag: 1n },
    { opcode: ds.OP_COPY, flags: ds.FLAG_SRC_DEVMEM, length: 16, src: 0x1_fff8n, dst: at(DATA), tag: 2n },
  ]);
  const done = await tq.reap(2);
  assert.deepEqual(
    done.map((x) => x.status),
    [ds.ST_OK, ds.ST_DEVMEM_VIOLATION],
  );
  assert.deepEqual(await lastFault(p), { queue: 3, code: ds.ST_DEVMEM_VIOLATION, iova: 0x1_fff8n });
  await expectQueueError(p, 3, ds.ST_DEVMEM_VIOLATION);
});

test('BAD_QUEUE_CONFIG: misaligned or mis-sized rings, a doorbell more than SQ_SIZE ahead', async () => {
  const cases: {
    name: string;
    fix: (tq: Awaited<ReturnType<typeof queue>>) => Promise<void>;
    iova: (tq: Awaited<ReturnType<typeof queue>>) => bigint;
  }[] = [
    {
      name: 'SQ_BASE misaligned',
      fix: (tq) => tq.pageWrite64(ds.QP_SQ_BASE, tq.sqIova + 32n),
      iova: (tq) => tq.sqIova + 32n,
    },
    {
      name: 'CQ_BASE misaligned',
      fix: (tq) => tq.pageWrite64(ds.QP_CQ_BASE, tq.cqIova + 8n),
      iova: (tq) => tq.cqIova + 8n,
    },
    {
      name: 'SQ_SIZE not a power of two',
      fix: (tq) => tq.pageWrite32(ds.QP_SQ_SIZE, 6),
      iova: (tq) => tq.sqIova,
    },
    { name: 'CQ_SIZE 1', fix: (tq) => tq.pageWrite32(ds.QP_CQ_SIZE, 1), iova: (tq) => tq.cqIova },
    {
      name: 'SQ_SIZE over 65536',
      fix: (tq) => tq.pageWrite32(ds.QP_SQ_SIZE, 131072),
      iova: (tq) => tq.sqIova,
    },
  ];
  for (const c of cases) {
    const p = await booted();
    const tq = await queue(p, 0);
    await c.fix(tq);
    await tq.submit([{ opcode: ds.OP_NOP }]);
    p.dev.runUntilIdle();
    assert.deepEqual(
      await lastFault(p),
      { queue: 0, code: ds.ST_BAD_QUEUE_CONFIG, iova: c.iova(tq) },
      c.name,
    );
    await expectQueueError(p, 0, ds.ST_BAD_QUEUE_CONFIG);
    assert.equal(tq.peek(0), null, `${c.name}: no completion`);
  }
  const p = await booted();
  const tq = await queue(p, 0, { sqSize: 8 });
  await tq.ring(9);
  p.dev.runUntilIdle();
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_BAD_QUEUE_CONFIG, iova: 9n });
  await expectQueueError(p, 0, ds.ST_BAD_QUEUE_CONFIG);
});

test('DMA_UNMAP with descriptors in flight: they complete as IOMMU_FAULT, even if the IOVA is mapped again', async () => {
  const p = await booted();
  const victim = p.map(0x80_0000n, 0x1_0000);
  victim.view.fill(0x11);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  p.dev.setDescriptorDelay(5, 0);
  await tq.submit([
    { opcode: ds.OP_NOP, tag: 1n },
    { opcode: ds.OP_COPY, length: 64, src: victim.iova + 0x100n, dst: at(DATA), tag: 2n },
    { opcode: ds.OP_NOP, tag: 3n },
  ]);
  p.dev.step();
  p.dev.step();
  p.dev.step();
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_INFLIGHT)), 3, 'three fetched, none completed yet');
  assert.equal((await r32(p.bus, BAR0, qcfg(0, ds.Q_STATUS))) & ds.Q_STATUS_IDLE, 0, 'not IDLE');
  const removed = p.dev.dmaUnmap(Number(victim.iova), victim.view.length);
  assert.equal(removed.length, 1);
  const again = p.map(victim.iova, 0x1_0000);
  again.view.fill(0x22);
  const done = await tq.reap(2);
  assert.deepEqual(
    done.map((c) => [c.tag, c.status]),
    [
      [1n, ds.ST_OK],
      [2n, ds.ST_IOMMU_FAULT],
    ],
  );
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_IOMMU_FAULT, iova: victim.iova + 0x100n });
  assert.ok(
    p.host.view.subarray(DATA, DATA + 64).every((b) => b === 0),
    'nothing was copied from either mapping',
  );
  await expectQueueError(p, 0, ds.ST_IOMMU_FAULT);

  // The third descriptor is still in flight; the queue reset writes it ABORTED.
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_INFLIGHT)), 1);
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_RESET);
  const aborted = tq.peek(2);
  assert.deepEqual([aborted?.tag, aborted?.status], [3n, ds.ST_ABORTED]);
});

/** Two NOPs taken by the device and held there (a descriptor delay): in flight. */
async function twoNopsInFlight(
  p: { dev: { setDescriptorDelay(ms: number): void; step(): unknown } },
  tq: { submit(d: { opcode: number; tag: bigint }[]): Promise<unknown> },
): Promise<void> {
  p.dev.setDescriptorDelay(1000);
  await tq.submit([
    { opcode: ds.OP_NOP, tag: 1n },
    { opcode: ds.OP_NOP, tag: 2n },
  ]);
  p.dev.step();
  p.dev.step();
}

test('ABORTED for descriptors in flight when a queue is disabled or reset', async () => {
  const p = await booted();
  const tq = await queue(p, 0);
  await twoNopsInFlight(p, tq);
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), 0);
  const done = await tq.reap(2);
  assert.deepEqual(
    done.map((c) => [c.tag, c.status]),
    [
      [1n, ds.ST_ABORTED],
      [2n, ds.ST_ABORTED],
    ],
  );
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_INFLIGHT)), 0);
});

/** The owner's three ways to stop a queue with descriptors in flight. */
const QUEUE_ENDS = [
  { name: 'Q_CTRL.ENABLE cleared', value: 0, reg: qcfg(0, ds.Q_CTRL) },
  { name: 'Q_CTRL.RESET', value: ds.Q_CTRL_RESET, reg: qcfg(0, ds.Q_CTRL) },
  { name: 'CONTROL.RESET', value: ds.CONTROL_RESET, reg: ds.REG_CONTROL },
];

/**
 * Two NOPs in flight on queue 0, then `cause` (what keeps the device from writing), then the queue stopped by
 * `end`: the descriptors are dropped — nothing in the completion ring, nothing in flight, no queue interrupt.
 */
async function droppedUnwritten(
  end: (typeof QUEUE_ENDS)[number],
  cause: string,
  makeCause: (p: Awaited<ReturnType<typeof booted>>) => Promise<unknown> | unknown,
) {
  const p = await booted();
  const tq = await queue(p, 0, { ringOffset: 0 });
  await twoNopsInFlight(p, tq);
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_INFLIGHT)), 2, `${end.name}: two in flight`);
  await makeCause(p);
  await w32(p.bus, BAR0, end.reg, end.value);
  const cq = p.host.view.subarray(tq.cqOffset, tq.cqOffset + 8 * ds.CQ_ENTRY_SIZE);
  assert.ok(
    cq.every((b) => b === 0),
    `${end.name}: nothing written to the completion ring (${cause})`,
  );
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_INFLIGHT)), 0, `${end.name}: nothing in flight`);
  assert.equal(
    await r32(p.bus, BAR0, qcfg(0, ds.Q_COMPLETED)),
    0,
    `${end.name}: the dropped ones are not counted`,
  );
  assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, 0), 0, `${end.name}: no queue interrupt`);
  return { p, tq };
}

test('bus master clear: a disable, a queue reset or a device reset writes no ABORTED completion; the descriptors in flight are dropped', async () => {
  for (const end of QUEUE_ENDS) {
    const { p, tq } = await droppedUnwritten(end, 'DMA is refused while bus master is clear', (p) =>
      p.bus.write(CONFIG, PCI_COMMAND, new Uint8Array([PCI_COMMAND_MEMORY, 0])),
    );
    if (end.value !== 0) continue;
    // Disabled, not reset: the indexes are kept, so with bus master back the queue continues after the
    // dropped descriptors, and its next completion takes the first CQ slot.
    p.dev.setDescriptorDelay(0);
    await p.bus.write(CONFIG, PCI_COMMAND, new Uint8Array([PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 0]));
    await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
    await tq.submit([{ opcode: ds.OP_NOP, tag: 3n }]);
    assert.deepEqual(
      (await tq.reap(1)).map((x) => [x.tag, x.status]),
      [[3n, ds.ST_OK]],
    );
  }
});

test('hung: a disable, a queue reset or a device reset writes no ABORTED completion; the descriptors in flight are dropped', async () => {
  // A hung device makes no progress (§9) and "writes no completion until a reset" (docs/SA-1.md): the aborts of
  // an owner's disable or reset are no exception, and a whole-device reset's aborts come before it ends the hang.
  for (const end of QUEUE_ENDS) {
    const { p } = await droppedUnwritten(end, 'a hung device writes nothing', (p) => p.dev.injectHang());
    const hung = (await r32(p.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_HUNG;
    assert.equal(
      hung,
      end.reg === ds.REG_CONTROL ? 0 : ds.STATUS_HUNG,
      `${end.name}: only a device reset ends the hang`,
    );
  }
});

test('a completion ring that becomes unmapped: only the fault record is written', async () => {
  const p = await booted();
  const ring = p.map(0x90_0000n, 4096);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  await tq.pageWrite64(ds.QP_CQ_BASE, ring.iova);
  p.dev.dmaUnmap(Number(ring.iova), 4096);
  await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
  p.dev.runUntilIdle();
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_IOMMU_FAULT, iova: ring.iova });
  assert.ok(
    ring.view.every((b) => b === 0),
    'nothing written',
  );
  await expectQueueError(p, 0, ds.ST_IOMMU_FAULT);
});
