// The engine reads a queue's rings through views it caches per IOMMU generation (engine.ts #rings): a ring
// whose map goes away after the queue has run must fault at its slot exactly as a ring unmapped before the
// first doorbell does, never reach the memory the map used to show.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { BAR0, qcfg, r32 } from './helpers/driver.js';
import { lastFault } from './helpers/fault-log.js';
import { type Booted, booted, HOST_IOVA, queue } from './helpers/scenario.js';

async function queueStatus(p: Booted): Promise<number> {
  return r32(p.bus, BAR0, qcfg(0, ds.Q_STATUS));
}

test('a completion ring unmapped after the queue ran: the next completion is only a fault record', async () => {
  const p = await booted();
  const ring = p.map(0x90_0000n, 4096);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  await tq.pageWrite64(ds.QP_CQ_BASE, ring.iova);
  await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
  p.dev.runUntilIdle();
  assert.equal(ring.view[14], 1, 'the first completion was written, phase 1');
  ring.view.fill(0);
  p.dev.dmaUnmap(Number(ring.iova), 4096);
  await tq.submit([{ opcode: ds.OP_NOP, tag: 2n }]);
  p.dev.runUntilIdle();
  assert.deepEqual(await lastFault(p), { queue: 0, code: ds.ST_IOMMU_FAULT, iova: ring.iova + 16n });
  assert.ok(
    ring.view.every((b) => b === 0),
    'nothing written through the old map',
  );
  const st = await queueStatus(p);
  assert.equal(st & ds.Q_STATUS_ERROR, ds.Q_STATUS_ERROR, 'queue 0 in ERROR');
});

test('a submission ring unmapped after the queue ran: the next fetch faults at its slot', async () => {
  const p = await booted();
  const ring = p.map(0x90_0000n, 4096);
  const tq = await queue(p, 0, { window: { base: HOST_IOVA, size: 0x100_0000n } });
  await tq.pageWrite64(ds.QP_SQ_BASE, ring.iova);
  // The helper writes descriptors at its own SQ address: write them into the ring map instead.
  const sqe = (tag: number): void => {
    const slot = ((tag - 1) % 8) * ds.SQ_ENTRY_SIZE;
    ring.view.fill(0, slot, slot + ds.SQ_ENTRY_SIZE);
    ring.view[slot] = ds.OP_NOP;
    ring.view[slot + 32] = tag;
  };
  sqe(1);
  await tq.pageWrite32(ds.QP_SQ_TAIL, 1);
  p.dev.runUntilIdle();
  const first = tq.peek(0);
  assert.deepEqual([first?.tag, first?.status], [1n, ds.ST_OK], 'the first NOP ran from the ring map');
  sqe(2);
  p.dev.dmaUnmap(Number(ring.iova), 4096);
  await tq.pageWrite32(ds.QP_SQ_TAIL, 2);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(1), null, 'no completion for a descriptor that could not be fetched');
  assert.deepEqual(await lastFault(p), {
    queue: 0,
    code: ds.ST_IOMMU_FAULT,
    iova: ring.iova + BigInt(ds.SQ_ENTRY_SIZE),
  });
  const st = await queueStatus(p);
  assert.equal(st >> ds.Q_STATUS_ERROR_SHIFT, ds.ST_IOMMU_FAULT);
});
