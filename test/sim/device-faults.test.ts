// Device-wide faults: firmware errors, queues gated on firmware, enable and
// bus master; hang injection and the ERR interrupt; injected fault records;
// stuck resets; the fault log ring. Separate from faults.test.ts (the
// per-queue error statuses) because these are about the device, not a queue.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { decodeFaultRecord } from '../../src/sim/model/faults.js';
import { makeFirmwareImage } from '../../src/sim/model/firmware.js';
import { VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import { BAR0, boot, loadFirmware, qcfg, r32, w32 } from './helpers/driver.js';
import { expectQueueError, faultVector, lastFault } from './helpers/fault-log.js';
import { inProcess } from './helpers/inproc.js';
import { type Booted, booted, FW_IOVA, HOST_IOVA, queue } from './helpers/scenario.js';

test('firmware errors: bad magic, bad length, bad checksum, unmapped image; each with a FW_FAULT record', async () => {
  const p = inProcess();
  const fw = p.map(0x10_0000n, 64 * 1024);
  const good = makeFirmwareImage({ version: 3, payload: new Uint8Array(1000).fill(1) });
  const cases: { name: string; image: Uint8Array; len?: number; iova?: bigint; err: number }[] = [
    {
      name: 'bad magic',
      image: Uint8Array.from(good, (b, i) => (i === 0 ? 0x58 : b)),
      err: ds.FW_ERR_BAD_MAGIC,
    },
    { name: 'FW_LEN shorter than a header', image: good, len: 8, err: ds.FW_ERR_BAD_LENGTH },
    {
      name: 'FW_LEN disagrees with the header',
      image: good,
      len: good.length - 1,
      err: ds.FW_ERR_BAD_LENGTH,
    },
    {
      name: 'bad checksum',
      image: Uint8Array.from(good, (b, i) => (i === 100 ? b ^ 1 : b)),
      err: ds.FW_ERR_BAD_CHECKSUM,
    },
    { name: 'image not mapped', image: good, iova: 0x70_0000n, err: ds.FW_ERR_IOMMU_FAULT },
  ];
  for (const [i, c] of cases.entries()) {
    // Bus master on for the fetch.
    await p.bus.write(7, 4, new Uint8Array([0x06, 0]));
    fw.view.set(c.image);
    const status = await loadFirmware(p.bus, c.iova ?? fw.iova, c.len ?? c.image.length);
    assert.equal(status, (ds.FW_STATUS_ERROR | c.err) >>> 0, c.name);
    const f = await lastFault(p);
    assert.deepEqual([f.queue, f.code], [ds.FAULT_QUEUE_DEVICE, ds.FAULT_FW], c.name);
    assert.equal(p.fired(VFIO_PCI_MSIX_IRQ_INDEX, p.dev.options.numQueues), i + 1, `${c.name}: fault vector`);
    assert.equal((await r32(p.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_FW_RUNNING, 0);
  }
  fw.view.set(good);
  assert.equal(await loadFirmware(p.bus, fw.iova, good.length), ds.FW_STATUS_RUNNING);
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_VERSION), 3);
});

test('no queue runs until firmware runs; CONTROL.ENABLE and bus master gate them too', async () => {
  const p = inProcess();
  const host = p.map(HOST_IOVA, 1 << 20);
  const fwMem = p.map(FW_IOVA, 64 * 1024);
  const b: Booted = { ...p, host };
  const tq = await queue(b, 0);
  await tq.submit([{ opcode: ds.OP_NOP }]);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(0), null, 'no firmware: nothing runs');
  await boot(p.bus, fwMem);
  await w32(p.bus, BAR0, ds.REG_CONTROL, 0);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(0), null, 'CONTROL.ENABLE clear: nothing runs');
  await p.bus.write(7, 4, new Uint8Array([0x02, 0])); // memory on, bus master off
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_ENABLE);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(0), null, 'bus master clear: no DMA');
  await p.bus.write(7, 4, new Uint8Array([0x06, 0]));
  assert.equal((await tq.reap(1))[0]?.status, ds.ST_OK);
});

test('hang injection: HUNG, heartbeat stops, no progress, HANG record, ERR interrupt; device reset recovers', async () => {
  const p = await booted();
  const tq = await queue(p, 0);
  const hb0 = await r32(p.bus, BAR0, ds.REG_HEARTBEAT);
  p.clock.now += 25;
  const hb1 = await r32(p.bus, BAR0, ds.REG_HEARTBEAT);
  assert.ok(hb1 >= hb0 + 2, `heartbeat advances at least every 10 ms (${hb0} -> ${hb1} over 25 ms)`);
  p.dev.injectHang();
  const st = await r32(p.bus, BAR0, ds.REG_STATUS);
  assert.equal(st & ds.STATUS_HUNG, ds.STATUS_HUNG);
  assert.equal(p.fired(VFIO_PCI_ERR_IRQ_INDEX, 0), 1);
  assert.deepEqual(await lastFault(p), { queue: ds.FAULT_QUEUE_DEVICE, code: ds.FAULT_HANG, iova: 0n });
  const frozen = await r32(p.bus, BAR0, ds.REG_HEARTBEAT);
  p.clock.now += 100;
  assert.equal(await r32(p.bus, BAR0, ds.REG_HEARTBEAT), frozen, 'heartbeat stopped');
  await tq.submit([{ opcode: ds.OP_NOP }]);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(0), null, 'no queue makes progress');
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET);
  assert.equal(
    await r32(p.bus, BAR0, ds.REG_STATUS),
    ds.STATUS_READY,
    'reset: not hung, no firmware, no faults',
  );
  assert.equal(p.fired(VFIO_PCI_ERR_IRQ_INDEX, 0), 1, 'the owner-requested reset adds no ERR signal');
});

test('ERR is for unrecoverable errors only: CONTROL.RESET and Q_CTRL.RESET never signal it (rev 2, 2.4)', async () => {
  const p = await booted();
  await queue(p, 0);
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_RESET);
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET);
  assert.equal(await r32(p.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY, 'the device did reset');
  assert.equal(p.fired(VFIO_PCI_ERR_IRQ_INDEX, 0), 0, 'no ERR for a reset the owner asked for');
});

test('injected fault record on a chosen queue', async () => {
  const p = await booted();
  await queue(p, 2);
  p.dev.injectFault(2, ds.ST_DEVMEM_VIOLATION, 0x1234n);
  assert.deepEqual(await lastFault(p), { queue: 2, code: ds.ST_DEVMEM_VIOLATION, iova: 0x1234n });
  await expectQueueError(p, 2, ds.ST_DEVMEM_VIOLATION);
  assert.equal(faultVector(p), 1);
});

test('stuck reset: Q_CTRL.RESET and CONTROL.RESET begin but read 1 until the injection is cleared', async () => {
  const p = await booted();
  const tq = await queue(p, 1);
  p.dev.setStuckReset(true, 1);
  await w32(p.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_RESET);
  assert.equal(
    await r32(p.bus, BAR0, qcfg(1, ds.Q_CTRL)),
    ds.Q_CTRL_RESET,
    'RESET still set, ENABLE cleared',
  );
  await w32(p.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
  assert.equal(
    await r32(p.bus, BAR0, qcfg(1, ds.Q_CTRL)),
    ds.Q_CTRL_RESET,
    'a queue in reset takes no enable',
  );
  await tq.submit([{ opcode: ds.OP_NOP }]);
  p.dev.runUntilIdle();
  assert.equal(tq.peek(0), null, 'a queue in reset runs nothing');
  // Other queues reset as usual.
  await w32(p.bus, BAR0, qcfg(0, ds.Q_CTRL), ds.Q_CTRL_RESET);
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_CTRL)), 0);
  p.dev.setStuckReset(false, 1);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_CTRL)), 0, 'the held reset finished');

  // No queue given: the whole-device reset sticks (STATUS RESETTING, not READY) until cleared.
  p.dev.setStuckReset(true);
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET | ds.CONTROL_ENABLE);
  assert.equal(await r32(p.bus, BAR0, ds.REG_CONTROL), ds.CONTROL_RESET);
  const st = await r32(p.bus, BAR0, ds.REG_STATUS);
  assert.equal(st & (ds.STATUS_RESETTING | ds.STATUS_READY), ds.STATUS_RESETTING);
  p.dev.setStuckReset(false);
  assert.equal(await r32(p.bus, BAR0, ds.REG_CONTROL), 0);
  assert.equal(await r32(p.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY, 'reset done: no firmware, READY');
  assert.throws(() => p.dev.setStuckReset(true, 99), /no queue 99/);
});

test('the fault log is a ring of 16 indexed by count mod 16', async () => {
  const p = await booted();
  for (let i = 0; i < 20; i++) p.dev.injectFault(0, 99, BigInt(i));
  assert.equal(await r32(p.bus, BAR0, ds.REG_FAULT_HEAD), 20);
  const rec3 = new Uint8Array(16);
  for (let w = 0; w < 4; w++) rec3.set(await p.bus.read(BAR0, ds.REG_FAULT_LOG + 3 * 16 + 4 * w, 4), 4 * w);
  assert.equal(decodeFaultRecord(rec3, 0).iova, 19n, 'record 19 overwrote slot 3');
  assert.equal(faultVector(p), 20, 'each record raises the fault vector');
});
