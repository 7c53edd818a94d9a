// Device events reach the right clients: a fault record goes to the lease
// holding that queue; a hang notifies everyone, reclaims every lease, and the
// broker brings the device back so clients can lease again.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { BAR0, REG, STATUS } from '../../src/drivers/sa1/regs.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
after(async () => {
  await rig?.close();
  await leakCheck();
});

test('a fault record on a queue reaches only the client holding it, as ERR with the fault in its info', async () => {
  rig = await startRig({ sim: { numQueues: 4 }, config: { sa1: { heartbeat_ms: 50 } } });
  const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
  const infoA = (await a.call('connect', { socket: rig.socket })).info;
  await b.call('connect', { socket: rig.socket });
  await rig.sim.inject({ kind: 'fault', queue: infoA.queue, code: 4, iova: 0x1234000n });
  await until("A's device-fault notice", async () => (await a.call('events')).includes('device-fault'));
  const lease = rig.broker.leases.all().find((l) => l.ctx.pid === a.pid)!;
  assert.deepEqual(
    lease.faults.map((f) => [f.queue, f.name, f.address]),
    [[infoA.queue, 'IOMMU_FAULT', 0x1234000n]],
  );
  assert.deepEqual(await b.call('events'), [], 'B heard nothing');
  await Promise.all([a.exit(), b.exit()]);
  await until('both leases to end', () => rig.broker.leases.all().length === 0);
});

test('a hang: every client is told, every lease reclaimed, the device reset and rebooted, and leasing works again', async () => {
  const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
  await a.call('connect', { socket: rig.socket });
  await b.call('connect', { socket: rig.socket });
  const recovered = new Promise<void>((resolve) => rig.broker.once('recovered', resolve));
  await rig.sim.inject({ kind: 'hang' });
  await recovered;
  assert.equal(rig.broker.leases.all().length, 0, 'every lease was reclaimed');
  assert.ok(rig.audit.some((e) => e.event === 'device-hang'));
  for (const c of [a, b]) {
    await until(`client ${c.pid} to be told and disconnected`, async () =>
      (await c.call('events')).includes('disconnected'),
    );
  }
  const status = await rig.device.read32(BAR0, REG.STATUS);
  assert.equal(status & STATUS.HUNG, 0, 'no longer hung');
  assert.ok(status & STATUS.FW_RUNNING, 'firmware running again');
  const d = await ClientProc.spawn();
  await d.call('connect', { socket: rig.socket });
  await d.call('queue');
  assert.equal((await d.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
  await Promise.all([a.exit(), b.exit(), d.exit()]);
});
