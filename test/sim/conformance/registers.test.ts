// SA-1 conformance, BAR0: every register's offset and power-on value, QCFG
// at 0x10000 + 64·q, the MSI-X table, firmware load and its error codes,
// fault records (FAULT_HEAD/ACK/LOG), hang, whole-device reset. Expected
// values are typed in from the datasheet (./sa1-spec.ts).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../../helpers/fds.js';
import { type Rig, rig, until } from '../helpers/real.js';
import {
  enableBusMaster,
  faultRecord,
  firmwareImage,
  loadFirmware,
  qcfg,
  r32,
  r64,
  w32,
  w64,
} from './owner.js';
import {
  BAR0,
  CONTROL,
  FAULT,
  FW_STATUS,
  ID_VALUE,
  IRQ,
  MSIX_ENTRY_SIZE,
  Q_STATUS,
  Q_VECTOR_NONE,
  QCFG,
  REGION,
  STATUS,
} from './sa1-spec.js';

after(trackFdLeaks());

const CONFIG = { numQueues: 6, queueStride: 8192, devmemSize: 4 << 20, devmemGranule: 1 << 18 };
const FW_IOVA = 0x10_0000n;

async function withRig(fn: (r: Rig) => Promise<void>): Promise<void> {
  const r = await rig(CONFIG);
  try {
    await fn(r);
  } finally {
    await r.close();
  }
}
const b0r = (r: Rig, off: number) => r32(r.client, REGION.bar0, off);
const b0w = (r: Rig, off: number, v: number) => w32(r.client, REGION.bar0, off, v);
/** QCFG[q]'s 64 bytes as 16 dwords (register accesses are 4 or 8 bytes). */
async function qcfgDwords(r: Rig, q: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < 16; i++) out.push(await b0r(r, qcfg(q, 4 * i)));
  return out;
}

test('§2.1 BAR0 power-on values and the configuration registers', async () => {
  await withRig(async (r) => {
    const expected: [string, number, number][] = [
      ['ID', BAR0.ID, ID_VALUE],
      ['STATUS', BAR0.STATUS, STATUS.READY],
      ['CONTROL', BAR0.CONTROL, 0],
      ['SCRATCH', BAR0.SCRATCH, 0],
      ['HEARTBEAT', BAR0.HEARTBEAT, 0],
      ['NUM_QUEUES', BAR0.NUM_QUEUES, 6],
      ['QUEUE_STRIDE', BAR0.QUEUE_STRIDE, 8192],
      ['DEVMEM_SIZE_MB', BAR0.DEVMEM_SIZE_MB, 4],
      ['DEVMEM_GRANULE', BAR0.DEVMEM_GRANULE, 1 << 18],
      ['FW_LEN', BAR0.FW_LEN, 0],
      ['FW_STATUS', BAR0.FW_STATUS, FW_STATUS.NONE],
      ['FW_VERSION', BAR0.FW_VERSION, 0],
      ['FAULT_HEAD', BAR0.FAULT_HEAD, 0],
      ['FAULT_ACK', BAR0.FAULT_ACK, 0],
      ['MSIX_PBA', BAR0.MSIX_PBA, 0],
    ];
    for (const [name, off, value] of expected) assert.equal(await b0r(r, off), value, name);
    assert.equal(await r64(r.client, REGION.bar0, BAR0.FW_IOVA), 0n, 'FW_IOVA');
    for (let n = 0; n < FAULT.logEntries; n++)
      assert.deepEqual(await faultRecord(r.client, n), { queue: 0, code: 0, reserved: 0, iova: 0n });

    // RO registers ignore writes; RW ones keep what is written.
    await b0w(r, BAR0.ID, 0);
    await b0w(r, BAR0.NUM_QUEUES, 99);
    assert.equal(await b0r(r, BAR0.ID), ID_VALUE);
    assert.equal(await b0r(r, BAR0.NUM_QUEUES), 6);
    await b0w(r, BAR0.SCRATCH, 0xdeadbeef);
    assert.equal(await b0r(r, BAR0.SCRATCH), 0xdeadbeef, 'SCRATCH is RW');
    await w64(r.client, REGION.bar0, BAR0.FW_IOVA, 0x1234_5678_9000n);
    assert.equal(await r64(r.client, REGION.bar0, BAR0.FW_IOVA), 0x1234_5678_9000n, 'FW_IOVA is RW, 64-bit');
    await b0w(r, BAR0.CONTROL, CONTROL.ENABLE);
    assert.equal(await b0r(r, BAR0.CONTROL), CONTROL.ENABLE, 'CONTROL.ENABLE is RW');
  });
});

test('§2.2 QCFG[q] at 0x10000 + 64·q: power-on values, RW registers, neighbours untouched', async () => {
  await withRig(async (r) => {
    for (const q of [0, 5]) {
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_CTRL)), 0, `Q_CTRL[${q}]`);
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_STATUS)), Q_STATUS.IDLE, `Q_STATUS[${q}]: idle, not running`);
      assert.equal(await r64(r.client, REGION.bar0, qcfg(q, QCFG.Q_WIN_BASE)), 0n);
      assert.equal(await r64(r.client, REGION.bar0, qcfg(q, QCFG.Q_WIN_SIZE)), 0n);
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_MEM_BASE)), 0);
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_MEM_SIZE)), 0);
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_VECTOR)), Q_VECTOR_NONE, `Q_VECTOR[${q}] power-on: none`);
      assert.equal(await b0r(r, qcfg(q, QCFG.Q_INFLIGHT)), 0);
      assert.equal(await r64(r.client, REGION.bar0, qcfg(q, QCFG.Q_COMPLETED)), 0n);
      assert.equal(await r64(r.client, REGION.bar0, qcfg(q, QCFG.Q_BYTES)), 0n);
      assert.equal(
        await r64(r.client, REGION.bar0, qcfg(q, QCFG.Q_XLAT)),
        0n,
        `Q_XLAT[${q}] power-on: identity`,
      );
    }
    const q = 3;
    await w64(r.client, REGION.bar0, qcfg(q, QCFG.Q_WIN_BASE), 0x1_2345_6000n);
    await w64(r.client, REGION.bar0, qcfg(q, QCFG.Q_WIN_SIZE), 0x2_0000_0000n);
    await b0w(r, qcfg(q, QCFG.Q_MEM_BASE), 0x4_0000);
    await b0w(r, qcfg(q, QCFG.Q_MEM_SIZE), 0x8_0000);
    await b0w(r, qcfg(q, QCFG.Q_VECTOR), 2);
    await w64(r.client, REGION.bar0, qcfg(q, QCFG.Q_XLAT), 0xffff_fff0_0000_1000n);
    // The whole 64-byte block as dwords: each value where the datasheet puts it, nothing elsewhere.
    const dwords = await qcfgDwords(r, q);
    assert.deepEqual(
      dwords,
      [0, Q_STATUS.IDLE, 0x2345_6000, 1, 0, 2, 0x4_0000, 0x8_0000, 2, 0, 0, 0, 0, 0, 0x1000, 0xffff_fff0],
      'QCFG[3] dwords: CTRL STATUS WIN_BASE(2) WIN_SIZE(2) MEM_BASE MEM_SIZE VECTOR INFLIGHT COMPLETED(2) BYTES(2) XLAT(2)',
    );
    for (const n of [2, 4]) {
      const other = await qcfgDwords(r, n);
      assert.deepEqual(
        other,
        [0, Q_STATUS.IDLE, 0, 0, 0, 0, 0, 0, Q_VECTOR_NONE, 0, 0, 0, 0, 0, 0, 0],
        `QCFG[${n}]`,
      );
    }
  });
});

test('§2.1 MSI-X table: NUM_QUEUES+1 entries of 16 bytes at 0x20000, power-on masked, storage', async () => {
  await withRig(async (r) => {
    const entries = CONFIG.numQueues + 1;
    for (const v of [0, entries - 1]) {
      const at = BAR0.MSIX_TABLE + v * MSIX_ENTRY_SIZE;
      assert.equal(await b0r(r, at + 12), 1, `vector ${v} control: masked`);
      await w64(r.client, REGION.bar0, at, 0xfee0_1000n + BigInt(v));
      await b0w(r, at + 8, 0x4000 + v);
      await b0w(r, at + 12, 0);
      assert.equal(await r64(r.client, REGION.bar0, at), 0xfee0_1000n + BigInt(v), `vector ${v} address`);
      assert.equal(await b0r(r, at + 8), 0x4000 + v, `vector ${v} data`);
      assert.equal(await b0r(r, at + 12), 0, `vector ${v} unmasked`);
    }
    // Past the last entry is not table.
    await b0w(r, BAR0.MSIX_TABLE + entries * MSIX_ENTRY_SIZE + 8, 0x55);
    assert.equal(await b0r(r, BAR0.MSIX_TABLE + entries * MSIX_ENTRY_SIZE + 8), 0, 'no entry NUM_QUEUES+1');
  });
});

test('§6 firmware: header "SA1F"/version/length/CRC32C; FW_STATUS codes; §5 FW_FAULT records; FAULT_HEAD/ACK', async () => {
  await withRig(async (r) => {
    const fw = await r.map(FW_IOVA, 64 * 1024);
    const faultVector = await r.eventfd(CONFIG.numQueues);
    await enableBusMaster(r.client);
    const good = firmwareImage(0x0a0b0c0d, new TextEncoder().encode('payload bytes'));
    const corrupt = (at: number, xor: number) => {
      const b = Buffer.from(good);
      b[at] = (b[at] as number) ^ xor;
      return b;
    };
    const cases: [string, Buffer, bigint, number, bigint][] = [
      ['bad magic', corrupt(0, 0x20), FW_IOVA, FW_STATUS.BAD_MAGIC, FW_IOVA],
      ['header length ≠ FW_LEN − 16', corrupt(8, 1), FW_IOVA, FW_STATUS.BAD_LENGTH, FW_IOVA],
      ['bad checksum', corrupt(12, 1), FW_IOVA, FW_STATUS.BAD_CHECKSUM, FW_IOVA],
      ['payload corrupted', corrupt(16, 1), FW_IOVA, FW_STATUS.BAD_CHECKSUM, FW_IOVA],
      ['unmapped image', good, 0x4000_0000n, FW_STATUS.IOMMU_FAULT, 0x4000_0000n],
    ];
    let head = 0;
    for (const [what, image, iova, status, faultIova] of cases) {
      fw.view.fill(0);
      fw.view.set(image);
      // The device holds the error a moment between its record and FW_STATUS: the record must come first.
      r.sim.inject({ kind: 'errorLag', ms: 200 });
      assert.equal((await loadFirmware(r.client, iova, image.length)) >>> 0, status, what);
      head++;
      assert.equal(await b0r(r, BAR0.FAULT_HEAD), head, `${what}: FAULT_HEAD counts records`);
      assert.deepEqual(
        await faultRecord(r.client, head - 1),
        { queue: FAULT.DEVICE_QUEUE, code: FAULT.FW_FAULT, reserved: 0, iova: faultIova },
        `${what}: fault record`,
      );
      assert.ok((await b0r(r, BAR0.STATUS)) & STATUS.FAULT_PENDING, `${what}: FAULT_PENDING`);
      await until(() => faultVector.read() !== null, `${what}: the fault vector NUM_QUEUES`);
    }
    // FW_LEN below the header: bad length, nothing fetched.
    assert.equal((await loadFirmware(r.client, FW_IOVA, 15)) >>> 0, FW_STATUS.BAD_LENGTH, 'FW_LEN 15');
    head++;
    await b0w(r, BAR0.FAULT_ACK, head);
    assert.equal(await b0r(r, BAR0.FAULT_ACK), head, 'FAULT_ACK is RW');
    assert.equal(
      (await b0r(r, BAR0.STATUS)) & STATUS.FAULT_PENDING,
      0,
      'FAULT_PENDING clears at FAULT_ACK = HEAD',
    );

    fw.view.set(good);
    assert.equal(await loadFirmware(r.client, FW_IOVA, good.length), FW_STATUS.RUNNING, 'good image');
    assert.equal(await b0r(r, BAR0.FW_VERSION), 0x0a0b0c0d, 'FW_VERSION from the header');
    assert.equal(await b0r(r, BAR0.STATUS), STATUS.READY | STATUS.FW_RUNNING);
    const beat = await b0r(r, BAR0.HEARTBEAT);
    await until(async () => (await b0r(r, BAR0.HEARTBEAT)) !== beat, 'HEARTBEAT to advance while running');
  });
});

test('§5/§9 hang: STATUS.HUNG, HANG record for the device, ERR interrupt, HEARTBEAT frozen', async () => {
  await withRig(async (r) => {
    const fw = await r.map(FW_IOVA, 64 * 1024);
    await enableBusMaster(r.client);
    const image = firmwareImage(1);
    fw.view.set(image);
    assert.equal(await loadFirmware(r.client, FW_IOVA, image.length), FW_STATUS.RUNNING);
    const err = await r.eventfd(0, IRQ.err);
    r.sim.injectHang();
    await until(async () => ((await b0r(r, BAR0.STATUS)) & STATUS.HUNG) !== 0, 'STATUS.HUNG');
    assert.deepEqual(await faultRecord(r.client, 0), {
      queue: FAULT.DEVICE_QUEUE,
      code: FAULT.HANG,
      reserved: 0,
      iova: 0n,
    });
    await until(() => err.read() !== null, 'ERR interrupt (index 3)');
    const beat = await b0r(r, BAR0.HEARTBEAT);
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(await b0r(r, BAR0.HEARTBEAT), beat, 'HEARTBEAT frozen');
  });
});

test('§9 CONTROL.RESET: reads 0 when done, registers back to power-on; held reset shows STATUS.RESETTING', async () => {
  await withRig(async (r) => {
    const fw = await r.map(FW_IOVA, 64 * 1024);
    await enableBusMaster(r.client);
    const image = firmwareImage(3);
    fw.view.set(image);
    assert.equal(await loadFirmware(r.client, FW_IOVA, image.length), FW_STATUS.RUNNING);
    await b0w(r, BAR0.SCRATCH, 7);
    await b0w(r, qcfg(1, QCFG.Q_VECTOR), 1);

    // docs/SA-1.md stuck reset: CONTROL reads RESET and STATUS reads RESETTING instead of READY until released.
    r.sim.inject({ kind: 'stuckReset' });
    await b0w(r, BAR0.CONTROL, CONTROL.RESET);
    assert.equal(await b0r(r, BAR0.CONTROL), CONTROL.RESET);
    assert.equal((await b0r(r, BAR0.STATUS)) & (STATUS.RESETTING | STATUS.READY), STATUS.RESETTING);
    r.sim.inject({ kind: 'stuckReset', clear: true });
    await until(async () => (await b0r(r, BAR0.CONTROL)) === 0, 'CONTROL.RESET to read 0');

    assert.equal(await b0r(r, BAR0.STATUS), STATUS.READY, 'STATUS: ready, firmware unloaded');
    assert.equal(await b0r(r, BAR0.FW_STATUS), FW_STATUS.NONE);
    assert.equal(await b0r(r, BAR0.FW_VERSION), 0);
    assert.equal(await b0r(r, BAR0.SCRATCH), 0);
    assert.equal(await b0r(r, BAR0.HEARTBEAT), 0);
    assert.equal(await b0r(r, qcfg(1, QCFG.Q_VECTOR)), Q_VECTOR_NONE);
    assert.equal(await b0r(r, BAR0.ID), ID_VALUE);
  });
});

test('§2.4 (rev 2) ERR fires for a hang, never for a reset the owner asked for', async () => {
  await withRig(async (r) => {
    const err = await r.eventfd(0, IRQ.err);
    await b0w(r, qcfg(2, QCFG.Q_CTRL), 2); // Q_CTRL.RESET
    await until(async () => (await b0r(r, qcfg(2, QCFG.Q_CTRL))) === 0, 'Q_CTRL.RESET to read 0');
    await b0w(r, BAR0.CONTROL, CONTROL.RESET);
    await until(async () => (await b0r(r, BAR0.CONTROL)) === 0, 'CONTROL.RESET to read 0');
    await r.client.reset(); // VFIO_USER_DEVICE_RESET
    // The eventfd counts: after the hang's ERR it holds 1, or more had any reset fired it too.
    r.sim.injectHang();
    let count = 0n;
    await until(() => {
      count += err.read() ?? 0n;
      return count > 0n;
    }, 'ERR interrupt for the hang');
    assert.equal(count, 1n, 'ERR fired once: for the hang alone');
  });
});
