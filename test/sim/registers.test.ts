// Config space, every BAR0 register, QCFG, the queue page and access-width
// rules, on the device model in-process.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VfioError } from '../../src/errors.js';
import { startSimulator } from '../../src/sim/index.js';
import { MSIX_CAP_OFFSET } from '../../src/sim/model/config-space.js';
import * as ds from '../../src/sim/model/datasheet.js';
import { OptionError } from '../../src/sim/model/options.js';
import { PCI_CAP_ID_MSIX } from '../../src/vfio/uapi/pci-regs.js';
import { BAR0, BAR2, BAR4, CONFIG, qcfg, r32, r64, w32, w64 } from './helpers/driver.js';
import { inProcess } from './helpers/inproc.js';
import { booted, queue } from './helpers/scenario.js';

const cfg32 = async (p: ReturnType<typeof inProcess>, off: number): Promise<number> =>
  r32(p.bus, CONFIG, off);

test('config space: identity, class, subsystem, capability list with MSI-X in BAR0', async () => {
  const p = inProcess({ numQueues: 4 });
  assert.equal(await cfg32(p, 0x00), 0x5a01_1234, 'vendor 0x1234, device 0x5a01');
  assert.equal(await cfg32(p, 0x08), 0x1200_0001, 'class 0x120000, revision 1');
  assert.equal(await cfg32(p, 0x2c), 0x0001_1234, 'subsystem 0x1234 / 0x0001');
  assert.equal(((await cfg32(p, 0x04)) >>> 16) & 0x10, 0x10, 'status: capability list');
  const capPtr = (await p.bus.read(CONFIG, 0x34, 1))[0] as number;
  assert.equal(capPtr, MSIX_CAP_OFFSET);
  const cap = await cfg32(p, capPtr);
  assert.equal(cap & 0xff, PCI_CAP_ID_MSIX);
  assert.equal((cap >>> 8) & 0xff, 0, 'last capability');
  assert.equal(((cap >>> 16) & 0x7ff) + 1, 5, 'NUM_QUEUES + 1 vectors');
  assert.equal(await cfg32(p, capPtr + 4), ds.REG_MSIX_TABLE, 'table in BAR0 (BIR 0) at 0x20000');
  assert.equal(await cfg32(p, capPtr + 8), ds.REG_MSIX_PBA, 'PBA in BAR0 at 0x30000');
  // Unaligned, odd-width config access is fine.
  assert.deepEqual([...(await p.bus.read(CONFIG, 1, 3))], [0x12, 0x01, 0x5a]);
});

test('config space: BAR sizing reads back the size masks; BAR2/BAR4 are 64-bit prefetchable', async () => {
  const p = inProcess({ numQueues: 3, queueStride: 4096, devmemSize: 1 << 21, devmemGranule: 1 << 16 });
  for (let off = 0x10; off <= 0x24; off += 4) await w32(p.bus, CONFIG, off, 0xffffffff);
  assert.equal(
    await cfg32(p, 0x10),
    ((~(ds.BAR0_SIZE - 1) >>> 0) & 0xfffffff0) >>> 0,
    'BAR0 256 KiB, 32-bit',
  );
  assert.equal(await cfg32(p, 0x14), 0, 'BAR1 unimplemented');
  assert.equal(
    await cfg32(p, 0x18),
    (((~(16384 - 1) >>> 0) & 0xfffffff0) | 0xc) >>> 0,
    'BAR2: 3×4 KiB rounds to 16 KiB',
  );
  assert.equal(await cfg32(p, 0x1c), 0xffffffff, 'BAR2 upper half');
  assert.equal(await cfg32(p, 0x20), ((~((1 << 21) - 1) >>> 0) | 0xc) >>> 0, 'BAR4 = DEVMEM_SIZE');
  assert.equal(await cfg32(p, 0x24), 0xffffffff);
  await w32(p.bus, CONFIG, 0x10, 0xfe00_0000);
  assert.equal(await cfg32(p, 0x10), 0xfe00_0000, 'an address is kept');
  await w32(p.bus, CONFIG, 0x00, 0);
  assert.equal(await cfg32(p, 0x00), 0x5a01_1234, 'IDs are read-only');
  await p.bus.write(CONFIG, 0x04, new Uint8Array([0xff, 0xff]));
  assert.equal((await cfg32(p, 0x04)) & 0xffff, 0x0406, 'command: memory, bus master, INTx disable writable');
  assert.equal(p.dev.config.busMaster, true);
});

test('BAR0 identity and geometry registers', async () => {
  const p = inProcess({ numQueues: 5, queueStride: 8192, devmemSize: 1 << 22, devmemGranule: 1 << 17 });
  assert.equal(await r32(p.bus, BAR0, ds.REG_ID), 0x5a01_0001);
  assert.equal(await r32(p.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY);
  assert.equal(await r32(p.bus, BAR0, ds.REG_NUM_QUEUES), 5);
  assert.equal(await r32(p.bus, BAR0, ds.REG_QUEUE_STRIDE), 8192);
  assert.equal(await r32(p.bus, BAR0, ds.REG_DEVMEM_SIZE_MB), 4);
  assert.equal(await r32(p.bus, BAR0, ds.REG_DEVMEM_GRANULE), 1 << 17);
  await w32(p.bus, BAR0, ds.REG_ID, 0);
  await w32(p.bus, BAR0, ds.REG_NUM_QUEUES, 0);
  assert.equal(await r32(p.bus, BAR0, ds.REG_ID), 0x5a01_0001, 'RO registers ignore writes');
  assert.equal(await r32(p.bus, BAR0, ds.REG_NUM_QUEUES), 5);
  await w32(p.bus, BAR0, ds.REG_SCRATCH, 0xdeadbeef);
  assert.equal(await r32(p.bus, BAR0, ds.REG_SCRATCH), 0xdeadbeef);
  assert.equal(await r32(p.bus, BAR0, 0x0ffc), 0, 'reserved offsets read 0');
});

test('a device memory DEVMEM_SIZE_MB cannot report (under 1 MiB) is refused, naming the option', async () => {
  for (const devmemSize of [1 << 16, 1 << 19]) {
    const named = (e: unknown): boolean =>
      e instanceof OptionError &&
      e.option === 'devmemSize' &&
      e.message ===
        `devmemSize must be a whole number of MiB, at least 1048576 bytes (DEVMEM_SIZE_MB reports it in MiB), got ${devmemSize}`;
    assert.throws(() => inProcess({ devmemSize, devmemGranule: 1 << 16 }), named, `${devmemSize} bytes`);
    await assert.rejects(
      startSimulator({ socketPath: '/nonexistent/sa1.sock', devmemSize, devmemGranule: 1 << 16 }),
      named,
      `startSimulator, ${devmemSize} bytes`,
    );
  }
  const smallest = inProcess({ devmemSize: 1 << 20, devmemGranule: 1 << 16 });
  assert.equal(await r32(smallest.bus, BAR0, ds.REG_DEVMEM_SIZE_MB), 1, '1 MiB, the smallest, reads 1');
});

test('BAR0 CONTROL, firmware registers, HEARTBEAT, FW_CMD write-only', async () => {
  const p = await booted();
  assert.equal(await r32(p.bus, BAR0, ds.REG_CONTROL), ds.CONTROL_ENABLE);
  assert.equal(await r32(p.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY | ds.STATUS_FW_RUNNING);
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_STATUS), ds.FW_STATUS_RUNNING);
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_VERSION), 7);
  assert.equal(await r64(p.bus, BAR0, ds.REG_FW_IOVA), 0x10_0000n, 'FW_IOVA is a 64-bit RW register');
  await w64(p.bus, BAR0, ds.REG_FW_IOVA, 0x1234_5678_9000n);
  assert.equal(await r64(p.bus, BAR0, ds.REG_FW_IOVA), 0x1234_5678_9000n);
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_IOVA + 4), 0x1234, 'high half alone');
  assert.ok((await r32(p.bus, BAR0, ds.REG_FW_LEN)) > 16);
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_CMD), 0, 'FW_CMD reads 0');
  const hb = await r32(p.bus, BAR0, ds.REG_HEARTBEAT);
  p.clock.now += 10;
  assert.ok((await r32(p.bus, BAR0, ds.REG_HEARTBEAT)) > hb, 'HEARTBEAT moved within 10 ms');
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET | ds.CONTROL_ENABLE);
  assert.equal(await r32(p.bus, BAR0, ds.REG_CONTROL), ds.CONTROL_ENABLE, 'RESET reads 0 when done');
  assert.equal(await r32(p.bus, BAR0, ds.REG_FW_STATUS), ds.FW_STATUS_NONE, 'reset unloads firmware');
  assert.equal(await r32(p.bus, BAR0, ds.REG_HEARTBEAT), 0);
});

test('QCFG registers: windows locked while enabled, vector, counters; MSI-X table storage; PBA reads 0', async () => {
  const p = await booted();
  await w64(p.bus, BAR0, qcfg(1, ds.Q_WIN_BASE), 0x1_0000_0000n);
  await w64(p.bus, BAR0, qcfg(1, ds.Q_WIN_SIZE), 0x2000n);
  await w32(p.bus, BAR0, qcfg(1, ds.Q_MEM_BASE), 0x1000);
  await w32(p.bus, BAR0, qcfg(1, ds.Q_MEM_SIZE), 0x3000);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_VECTOR)), ds.Q_VECTOR_NONE, 'no vector at power-on');
  await w32(p.bus, BAR0, qcfg(1, ds.Q_VECTOR), 3);
  await w32(p.bus, BAR0, qcfg(1, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
  await w64(p.bus, BAR0, qcfg(1, ds.Q_WIN_BASE), 0n);
  await w32(p.bus, BAR0, qcfg(1, ds.Q_MEM_SIZE), 0);
  assert.equal(
    await r64(p.bus, BAR0, qcfg(1, ds.Q_WIN_BASE)),
    0x1_0000_0000n,
    'window writes ignored while enabled',
  );
  assert.equal(await r64(p.bus, BAR0, qcfg(1, ds.Q_WIN_SIZE)), 0x2000n);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_MEM_BASE)), 0x1000);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_MEM_SIZE)), 0x3000);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_VECTOR)), 3);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_CTRL)), ds.Q_CTRL_ENABLE);
  assert.equal(
    await r32(p.bus, BAR0, qcfg(1, ds.Q_STATUS)),
    ds.Q_STATUS_RUNNING | ds.Q_STATUS_IDLE,
    'RUNNING and IDLE',
  );
  await w32(p.bus, BAR0, qcfg(1, ds.Q_INFLIGHT), 9);
  await w64(p.bus, BAR0, qcfg(1, ds.Q_COMPLETED), 9n);
  assert.equal(await r32(p.bus, BAR0, qcfg(1, ds.Q_INFLIGHT)), 0, 'RO counters ignore writes');
  assert.equal(await r64(p.bus, BAR0, qcfg(1, ds.Q_COMPLETED)), 0n);
  assert.equal(await r64(p.bus, BAR0, qcfg(1, ds.Q_BYTES)), 0n);
  assert.equal(await r32(p.bus, BAR0, qcfg(50, ds.Q_CTRL)), 0, 'QCFG beyond NUM_QUEUES reads 0');

  const entry = ds.REG_MSIX_TABLE + 2 * ds.MSIX_ENTRY_SIZE;
  assert.equal(await r32(p.bus, BAR0, entry + 12), 1, 'vectors start masked');
  await w64(p.bus, BAR0, entry, 0xfee0_0000n);
  await w32(p.bus, BAR0, entry + 8, 0x41);
  assert.equal(await r64(p.bus, BAR0, entry), 0xfee0_0000n);
  assert.equal(await r32(p.bus, BAR0, entry + 8), 0x41);
  assert.equal(await r32(p.bus, BAR0, ds.REG_MSIX_PBA), 0);
});

test("queue page: RO registers are the device's, reserved space reads 0, rings latch at the first doorbell", async () => {
  const p = await booted({ numQueues: 3 });
  const tq = await queue(p, 0, { sqSize: 8, cqSize: 8 });
  const stride = p.dev.options.queueStride;
  // A client storing into RO registers is overwritten and never acted on.
  await w32(p.bus, BAR2, ds.QP_SQ_HEAD, 5);
  await w32(p.bus, BAR2, ds.QP_CQ_TAIL, 5);
  assert.equal(await r32(p.bus, BAR2, ds.QP_SQ_HEAD), 0);
  new DataView(p.backing.pages[0]!.buffer).setUint32(ds.QP_CQ_TAIL, 77, true);
  await tq.submit([{ opcode: ds.OP_NOP }]);
  await tq.reap(1);
  assert.equal(await tq.pageRead32(ds.QP_CQ_TAIL), 1, 'the device overwrote what the client stored');
  assert.equal(await r32(p.bus, BAR2, 0x100), 0, 'reserved part of the page reads 0');
  assert.equal(await r32(p.bus, BAR2, 3 * stride), 0, 'pages past NUM_QUEUES are reserved');
  // Latched: changing SQ_SIZE / CQ_BASE now is ignored until a queue reset.
  await tq.pageWrite32(ds.QP_SQ_SIZE, 3);
  await tq.pageWrite64(ds.QP_CQ_BASE, 0x12n);
  await tq.submit([{ opcode: ds.OP_NOP, tag: 2n }]);
  assert.deepEqual(
    (await tq.reap(1)).map((c) => [c.tag, c.status]),
    [[2n, 0]],
  );
  assert.equal(await r32(p.bus, BAR2, ds.QP_SQ_SIZE), 3, 'the register holds what was written');
});

test('register width rules: BAR0/BAR2 take 4 or 8 bytes naturally aligned; BAR4 and config any width', async () => {
  const p = inProcess();
  const bad: [number, number, number][] = [
    [BAR0, 0, 2],
    [BAR0, 0, 1],
    [BAR0, 2, 4],
    [BAR0, 4, 8],
    [BAR0, 0, 16],
    [BAR2, 1, 4],
  ];
  for (const [region, off, count] of bad) {
    await assert.rejects(
      p.bus.read(region, off, count),
      (e: unknown) => e instanceof VfioError && e.code === 'EINVAL',
    );
    await assert.rejects(p.bus.write(region, off, new Uint8Array(count)), VfioError);
  }
  await p.bus.write(BAR4, 3, new Uint8Array([1, 2, 3]));
  assert.deepEqual([...(await p.bus.read(BAR4, 2, 5))], [0, 1, 2, 3, 0]);
  await assert.rejects(p.bus.read(BAR4, p.dev.options.devmemSize - 1, 2), VfioError, 'bounds still apply');
  await assert.rejects(p.bus.read(1, 0, 4), VfioError, 'BAR1 does not exist');
});

test('whole-device reset: queues disabled with in-flight ABORTED, fault log cleared, devmem zeroed, maps kept', async () => {
  const p = await booted();
  const tq = await queue(p, 0);
  await p.bus.write(BAR4, 0, new Uint8Array([7, 7, 7]));
  p.dev.setDescriptorDelay(50);
  await tq.submit([{ opcode: ds.OP_NOP, tag: 4n }]);
  p.dev.step();
  p.dev.injectFault(1, 0x42);
  await w32(p.bus, BAR0, ds.REG_CONTROL, ds.CONTROL_RESET);
  assert.deepEqual([tq.peek(0)?.tag, tq.peek(0)?.status], [4n, ds.ST_ABORTED]);
  assert.equal(await r32(p.bus, BAR0, qcfg(0, ds.Q_CTRL)), 0, 'queue disabled');
  assert.equal(await r32(p.bus, BAR0, ds.REG_FAULT_HEAD), 0, 'fault log cleared');
  assert.deepEqual([...(await p.bus.read(BAR4, 0, 3))], [0, 0, 0], 'device memory zeroed');
  assert.equal(p.dev.iommu.maps.length, 2, 'DMA mappings kept');
  assert.equal(await r32(p.bus, BAR0, ds.REG_CONTROL), 0);
  assert.equal(await r64(p.bus, BAR0, qcfg(0, ds.Q_WIN_SIZE)), 0n, 'QCFG back to power-on values');
});
