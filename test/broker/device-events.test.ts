// Device events reach the right clients: a fault record goes to the lease
// holding that queue; a hang notifies everyone, reclaims every lease, and the
// broker brings the device back so clients can lease again.
import assert from 'node:assert/strict';
import { after, afterEach, beforeEach, test } from 'node:test';
import { BAR0, REG, STATUS } from '../../src/hw/sa1/regs.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

// Each test has its own rig and clients, so any one of them runs alone (--test-name-pattern) as in the file.
let rig: Rig;
let clients: ClientProc[] = [];
const spawnClient = async (): Promise<ClientProc> => {
  const c = await ClientProc.spawn();
  clients.push(c);
  return c;
};
beforeEach(async () => {
  rig = await startRig({ sim: { numQueues: 4 }, config: { sa1: { heartbeat_ms: 50 } } });
});
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
  await rig.close();
});

test('a fault record on a queue reaches only the client holding it, as ERR with the fault in its info', async () => {
  const [a, b] = await Promise.all([spawnClient(), spawnClient()]);
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

// The broker keeps a lease's last 16 fault records; a client counts new ones by the info's faultsTotal. Counted
// by the list's length, the 17th fault was never reported (the list stayed at 16), and two faults between reads
// reported one.
test('every fault reaches the client, past the 16 records the broker keeps, and a burst is counted whole', async () => {
  const a = await spawnClient();
  const info = (await a.call('connect', { socket: rig.socket })).info;
  type FaultEvent = { addresses: string[]; missed: number };
  const reported = async () => {
    const evs: FaultEvent[] = await a.call('faultEvents');
    return {
      addresses: evs.flatMap((e) => e.addresses),
      total: evs.reduce((n, e) => n + e.addresses.length + e.missed, 0),
    };
  };
  const iova = (i: number) => 0x1000000 + i * 0x1000;
  for (let i = 0; i < 20; i++) {
    await rig.sim.inject({ kind: 'fault', queue: info.queue, code: 4, iova: BigInt(iova(i)) });
    await until(`fault ${i + 1} to be reported`, async () => (await reported()).total === i + 1);
  }
  assert.deepEqual(
    (await reported()).addresses,
    Array.from({ length: 20 }, (_, i) => `0x${iova(i).toString(16)}`),
    'each fault reported once, in order',
  );
  const lease = rig.broker.leases.all().find((l) => l.ctx.pid === a.pid)!;
  assert.equal(lease.faults.length, 16, 'the broker keeps the last 16');
  assert.equal(lease.faultsTotal, 20);
  // 30 more while the client is stopped: it wakes to one notice, 16 records held and 14 it can only count.
  // The device's log holds 16 records (datasheet §2.1), so the broker drains it after each 15: the burst is the
  // client's, not a device log overflowing (a broker that falls behind loses records: device-faults-lost).
  a.proc.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
  try {
    for (const end of [35, 50]) {
      for (let i = end - 15; i < end; i++)
        await rig.sim.inject({ kind: 'fault', queue: info.queue, code: 4, iova: BigInt(iova(i)) });
      await until(`the broker to count ${end} faults`, () => lease.faultsTotal === end);
    }
  } finally {
    a.proc.kill('SIGCONT');
  }
  await until('the burst to be counted', async () => (await reported()).total >= 50);
  const after = await reported();
  assert.equal(after.total, 50, 'counted whole, none twice');
  assert.equal(after.addresses.at(-1), `0x${iova(49).toString(16)}`);
  const missed: number[] = ((await a.call('faultEvents')) as { missed: number }[]).map((e) => e.missed);
  assert.ok(
    missed.some((m) => m > 0),
    `the client counted faults it could not see (missed per event: ${missed.join(', ')})`,
  );
  await a.exit();
  await until('the lease to end', () => rig.broker.leases.all().length === 0);
});

// The device's log holds 16 records (datasheet §2.1); a broker that reads it too late finds older ones
// overwritten. Whose they were is gone with them, so no lease is told: the operator is, by count.
test('fault records the device overwrote before the broker read them are counted in the audit log', async () => {
  const a = await spawnClient();
  const info = (await a.call('connect', { socket: rig.socket })).info;
  const lease = rig.broker.leases.all().find((l) => l.ctx.pid === a.pid)!;
  // The fault vector is NUM_QUEUES (4 here): the broker hears nothing of the first 24 records.
  await rig.sim.inject({ kind: 'dropIrq', count: 24, vector: 4 });
  for (let i = 0; i < 25; i++)
    await rig.sim.inject({ kind: 'fault', queue: info.queue, code: 4, iova: BigInt(0x1000000 + i * 0x1000) });
  // The drain reads one record at a time: the count grows to the 16 the log still held.
  await until('the broker to read the log', () => lease.faultsTotal >= 16);
  assert.equal(lease.faultsTotal, 16, 'the 16 records the log still held');
  assert.equal(lease.faults.at(-1)?.address, BigInt(0x1000000 + 24 * 0x1000));
  const lost = rig.audit.filter((e) => e.event === 'device-faults-lost');
  assert.deepEqual(
    lost.map((e) => e.lost),
    [9],
    'one record, counting the 9 overwritten',
  );
  await a.exit();
  await until('the lease to end', () => rig.broker.leases.all().length === 0);
});

test('a hang: every client is told, every lease reclaimed, the device reset and rebooted, and leasing works again', async () => {
  const [a, b] = await Promise.all([spawnClient(), spawnClient()]);
  await a.call('connect', { socket: rig.socket });
  await b.call('connect', { socket: rig.socket });
  const recovered = new Promise<void>((resolve) => rig.broker.once('recovered', resolve));
  await rig.sim.inject({ kind: 'hang' });
  await recovered;
  assert.equal(rig.broker.leases.all().length, 0, 'every lease was reclaimed');
  assert.ok(rig.audit.some((e) => e.event === 'device-hang'));
  // Told: each client hears 'device-reset' (its ERR notice), not only the 'disconnected' every reclaim produces.
  for (const c of [a, b]) {
    await until(`client ${c.pid} to be disconnected`, async () =>
      (await c.call('events')).includes('disconnected'),
    );
    await until(`client ${c.pid} to hear device-reset`, async () =>
      (await c.call('events')).includes('device-reset'),
    ).catch(() => undefined);
    const events: string[] = await c.call('events');
    assert.ok(events.includes('device-reset'), `client ${c.pid} was told of the reset: ${events.join(', ')}`);
  }
  const status = await rig.device.read32(BAR0, REG.STATUS);
  assert.equal(status & STATUS.HUNG, 0, 'no longer hung');
  assert.ok(status & STATUS.FW_RUNNING, 'firmware running again');
  const d = await spawnClient();
  await d.call('connect', { socket: rig.socket });
  await d.call('queue');
  assert.equal((await d.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
  await Promise.all([a.exit(), b.exit(), d.exit()]);
});

test('the broker resetting the device raises no ERR of its own: a later hang is still heard through ERR', async () => {
  // Datasheet rev 2, 2.4: a reset the owner asked for signals no ERR. A driver that
  // still expected one would take the next real ERR (this hang's) for it and miss it.
  const hangs = (): unknown[] => rig.audit.filter((e) => e.event === 'device-hang').map((e) => e.reason);
  for (let round = 1; round <= 2; round++) {
    const recovered = new Promise<void>((resolve) => rig.broker.once('recovered', resolve));
    await rig.sim.inject({ kind: 'hang' });
    await recovered; // the recovery resets the device (CONTROL.RESET)
    assert.deepEqual(hangs(), Array(round).fill('the device raised ERR and reports HUNG'), `hang ${round}`);
  }
});
