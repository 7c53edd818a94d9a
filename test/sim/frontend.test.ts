// The simulator's front end serves register accesses from the register file
// it shares with the device worker: reads, and writes that only store a
// value, never reach the worker (its served-command count says so), while
// every datasheet rule still holds as the owner sees it over the wire.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as ds from '../../src/sim/model/datasheet.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { BAR0, BAR4, CONFIG, qcfg, r32, r64, TestQueue, w32, w64 } from './helpers/driver.js';
import { bootedRig, workerCommands } from './helpers/real.js';

after(trackFdLeaks());

const HOST_IOVA = 0x20_0000n;

test('register reads, and writes that only store a value, are answered without the device worker', async () => {
  const r = await bootedRig();
  try {
    const served = await workerCommands(r, async () => {
      assert.equal(await r32(r.bus, BAR0, ds.REG_ID), ds.ID_VALUE);
      assert.equal(await r32(r.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY | ds.STATUS_FW_RUNNING);
      await w32(r.bus, BAR0, ds.REG_SCRATCH, 0x1234_5678);
      assert.equal(await r32(r.bus, BAR0, ds.REG_SCRATCH), 0x1234_5678);
      await w64(r.bus, BAR0, ds.REG_FW_IOVA, 0xab_0000_1000n);
      assert.equal(await r64(r.bus, BAR0, ds.REG_FW_IOVA), 0xab_0000_1000n);
      await r32(r.bus, BAR0, ds.REG_HEARTBEAT);
      await w64(r.bus, BAR0, qcfg(2, ds.Q_WIN_BASE), 0x4000_0000n);
      await w32(r.bus, BAR0, qcfg(2, ds.Q_VECTOR), 2);
      assert.equal(await r64(r.bus, BAR0, qcfg(2, ds.Q_WIN_BASE)), 0x4000_0000n);
      assert.equal(await r32(r.bus, BAR0, qcfg(2, ds.Q_STATUS)), ds.Q_STATUS_IDLE);
      await w32(r.bus, BAR0, ds.REG_MSIX_TABLE + 8, 0x41);
      assert.equal(await r32(r.bus, BAR0, ds.REG_MSIX_TABLE + 8), 0x41);
      assert.equal(await r32(r.bus, CONFIG, 0), ds.SA1_VENDOR_ID | (ds.SA1_DEVICE_ID << 16));
      await w32(r.bus, CONFIG, 0x10, 0xffff_ffff); // BAR0 sizing
      assert.equal(await r32(r.bus, CONFIG, 0x10), ~(ds.BAR0_SIZE - 1) >>> 0);
    });
    assert.equal(served, 0, 'no register access above needed the device worker');

    // Writes the device acts on, and memory it holds, still go to it: one request each.
    // Q_CTRL: enabling a disabled queue only stores the bit (nothing is in flight); disabling an enabled one
    // aborts its in-flight work and a RESET clears its rings, on the device.
    assert.equal(await workerCommands(r, () => w32(r.bus, BAR0, qcfg(2, ds.Q_CTRL), 0)), 0, 'Q_CTRL 0 to 0');
    const enableQ2 = () => w32(r.bus, BAR0, qcfg(2, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
    assert.equal(await workerCommands(r, enableQ2), 0, 'Q_CTRL.ENABLE');
    assert.equal(await r32(r.bus, BAR0, qcfg(2, ds.Q_STATUS)), ds.Q_STATUS_RUNNING | ds.Q_STATUS_IDLE);
    assert.equal(await workerCommands(r, () => w32(r.bus, BAR0, qcfg(2, ds.Q_CTRL), 0)), 1, 'disable');
    const reset = () => w32(r.bus, BAR0, qcfg(2, ds.Q_CTRL), ds.Q_CTRL_RESET);
    assert.equal(await workerCommands(r, reset), 1, 'Q_CTRL.RESET');
    assert.equal(await workerCommands(r, () => w32(r.bus, BAR0, ds.REG_FW_CMD, 0)), 1, 'FW_CMD');
    const enable = ds.CONTROL_ENABLE;
    assert.equal(await workerCommands(r, () => w32(r.bus, BAR0, ds.REG_CONTROL, enable)), 1, 'CONTROL');
    const cmd = await r32(r.bus, CONFIG, 4);
    assert.equal(await workerCommands(r, () => w32(r.bus, CONFIG, 4, cmd)), 1, 'PCI_COMMAND');
    assert.equal(await workerCommands(r, async () => void (await r.bus.read(BAR4, 0, 4))), 1, 'BAR4');
  } finally {
    await r.close();
  }
});

test('front-end register rules: RO registers, windows locked while enabled, counters from the device', async () => {
  const r = await bootedRig();
  try {
    await w32(r.bus, BAR0, ds.REG_ID, 0);
    await w32(r.bus, BAR0, ds.REG_NUM_QUEUES, 0);
    await w32(r.bus, BAR0, ds.REG_FW_STATUS, 0);
    assert.equal(await r32(r.bus, BAR0, ds.REG_ID), ds.ID_VALUE, 'RO registers ignore writes');
    assert.equal(await r32(r.bus, BAR0, ds.REG_NUM_QUEUES), 4);
    assert.equal(await r32(r.bus, BAR0, ds.REG_FW_STATUS), ds.FW_STATUS_RUNNING);
    assert.equal(await r32(r.bus, BAR0, 0x0ffc), 0, 'reserved offsets read 0');
    await w32(r.bus, BAR0, qcfg(9, ds.Q_VECTOR), 1);
    assert.equal(await r32(r.bus, BAR0, qcfg(9, ds.Q_VECTOR)), 0, 'QCFG past NUM_QUEUES ignores writes');

    const host = await r.map(HOST_IOVA, 1 << 16);
    const tq = new TestQueue(r.bus, { q: 1, mem: host, sqSize: 8, cqSize: 8 }, r.sim.options.queueStride);
    await tq.configure();
    await w64(r.bus, BAR0, qcfg(1, ds.Q_WIN_BASE), 0n);
    await w64(r.bus, BAR0, qcfg(1, ds.Q_WIN_SIZE), 0n);
    await w32(r.bus, BAR0, qcfg(1, ds.Q_MEM_SIZE), 0x1000);
    assert.equal(
      await r64(r.bus, BAR0, qcfg(1, ds.Q_WIN_BASE)),
      HOST_IOVA,
      'window writes ignored while enabled',
    );
    assert.equal(await r64(r.bus, BAR0, qcfg(1, ds.Q_WIN_SIZE)), 1n << 16n);
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_MEM_SIZE)), 0);
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_STATUS)), ds.Q_STATUS_RUNNING | ds.Q_STATUS_IDLE);

    await tq.submit([{ opcode: ds.OP_NOP }, { opcode: ds.OP_NOP }, { opcode: ds.OP_NOP }]);
    await tq.reap(3);
    assert.equal(
      await r64(r.bus, BAR0, qcfg(1, ds.Q_COMPLETED)),
      3n,
      'the device counted, the front end reads',
    );
    await w64(r.bus, BAR0, qcfg(1, ds.Q_COMPLETED), 0n);
    assert.equal(await r64(r.bus, BAR0, qcfg(1, ds.Q_COMPLETED)), 3n, 'RO counters ignore writes');
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_INFLIGHT)), 0);

    // Clearing bus master (the device acts on it) stops the queue: RUNNING clears.
    const cmd = await r32(r.bus, CONFIG, 4);
    await w32(r.bus, CONFIG, 4, cmd & ~4);
    assert.equal(
      await r32(r.bus, BAR0, qcfg(1, ds.Q_STATUS)),
      ds.Q_STATUS_IDLE,
      'no bus master: not RUNNING',
    );
    await w32(r.bus, CONFIG, 4, cmd);

    await w32(r.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_RESET | ds.Q_CTRL_ENABLE);
    assert.equal(
      await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)),
      ds.Q_CTRL_ENABLE,
      'Q_CTRL.RESET reads 0 when done',
    );
    assert.equal(await r64(r.bus, BAR0, qcfg(1, ds.Q_COMPLETED)), 0n, 'queue reset clears the counters');
    assert.equal(await r64(r.bus, BAR0, qcfg(1, ds.Q_WIN_BASE)), HOST_IOVA, 'and keeps the windows');

    await assert.rejects(
      r.client.regionRead(BAR0, 2, 4),
      (e: unknown) => (e as { code?: string }).code === 'EINVAL',
      'register width rules hold in the front end',
    );
    await assert.rejects(r.client.regionWrite(BAR0, ds.REG_SCRATCH, new Uint8Array(2)), {
      code: 'EINVAL',
    });
  } finally {
    await r.close();
  }
});

test('front-end derived registers: HEARTBEAT advances, FAULT_ACK clears FAULT_PENDING, CONTROL.RESET', async () => {
  const r = await bootedRig();
  try {
    const hb = await r32(r.bus, BAR0, ds.REG_HEARTBEAT);
    const end = performance.now() + 5000;
    while ((await r32(r.bus, BAR0, ds.REG_HEARTBEAT)) === hb) {
      assert.ok(performance.now() < end, 'HEARTBEAT moved within 5 s');
      await sleep(2);
    }

    r.sim.injectFault(0, ds.ST_IOMMU_FAULT, 0x5000n);
    assert.equal(await r32(r.bus, BAR0, ds.REG_FAULT_HEAD), 1);
    assert.equal(await r32(r.bus, BAR0, ds.REG_FAULT_LOG), ds.ST_IOMMU_FAULT << 16, 'record: queue 0, code');
    assert.equal(await r64(r.bus, BAR0, ds.REG_FAULT_LOG + 8), 0x5000n, 'record: IOVA');
    const pending = ds.STATUS_READY | ds.STATUS_FW_RUNNING | ds.STATUS_FAULT_PENDING;
    assert.equal(await r32(r.bus, BAR0, ds.REG_STATUS), pending);
    await w32(r.bus, BAR0, ds.REG_FAULT_ACK, 1);
    assert.equal(await r32(r.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY | ds.STATUS_FW_RUNNING);

    r.sim.injectHang();
    assert.equal((await r32(r.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_HUNG, ds.STATUS_HUNG);
    const frozen = await r32(r.bus, BAR0, ds.REG_HEARTBEAT);
    await sleep(5);
    assert.equal(await r32(r.bus, BAR0, ds.REG_HEARTBEAT), frozen, 'a hung device stops its heartbeat');

    await w32(r.bus, BAR0, ds.REG_SCRATCH, 7);
    await w32(r.bus, BAR0, ds.REG_MSIX_TABLE + 12, 0);
    await w32(r.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET | ds.CONTROL_ENABLE);
    assert.equal(await r32(r.bus, BAR0, ds.REG_CONTROL), ds.CONTROL_ENABLE, 'RESET reads 0 when done');
    assert.equal(await r32(r.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY, 'not hung, no firmware, no fault');
    assert.equal(await r32(r.bus, BAR0, ds.REG_SCRATCH), 0);
    assert.equal(await r32(r.bus, BAR0, ds.REG_HEARTBEAT), 0);
    assert.equal(await r32(r.bus, BAR0, ds.REG_FAULT_HEAD), 0);
    assert.equal(await r32(r.bus, BAR0, ds.REG_MSIX_TABLE + 12), 1, 'vectors masked again');
  } finally {
    await r.close();
  }
});
