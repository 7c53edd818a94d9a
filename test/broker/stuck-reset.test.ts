// Waits that fail loudly: a queue or device reset that never finishes (the
// simulator's stuckReset injection) quarantines what it concerns instead of
// letting the broker carry on as if the device had finished.
import assert from 'node:assert/strict';
import { after, afterEach, beforeEach, test } from 'node:test';
import { Q, Q_STATUS, qcfg } from '../../src/hw/sa1/regs.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig;
let clients: ClientProc[] = [];
const spawnClient = async (): Promise<ClientProc> => {
  const c = await ClientProc.spawn();
  clients.push(c);
  return c;
};
beforeEach(async () => {
  rig = await startRig({ sim: { numQueues: 2 }, config: { lifetime: { quiesce_timeout_ms: 100 } } });
});
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
  await rig.close();
});

test('a reclaimed lease whose queue reset never finishes is quarantined with the reason; its queue is not leased again', async () => {
  const a = await spawnClient();
  const infoA = (await a.call('connect', { socket: rig.socket })).info;
  const lease = rig.broker.leases.get(infoA.lease)!;
  await rig.sim.inject({ kind: 'stuckReset', queue: infoA.queue });
  await a.exit();
  await until('the lease to be quarantined', () => lease.state === 'quarantined', 5000);
  const why = new RegExp(
    `quiesce: ETIMEDOUT: sa1: queue ${infoA.queue} reset \\(Q_CTRL.RESET\\) did not finish in 100 ms \\(last read 0x2\\)`,
  );
  assert.match(lease.quarantineReason ?? '', why);
  assert.match(String(lease.summary().quarantineReason), why);
  const audited = rig.audit.find((e) => e.event === 'quarantined' && e.lease === lease.id);
  assert.ok(audited, 'the quarantine is audited');
  assert.ok(audited.problems.some((p: string) => why.test(p)));
  // The next client gets the other queue; the one after is refused: the stuck queue is out of the pool.
  const b = await spawnClient();
  const infoB = (await b.call('connect', { socket: rig.socket })).info;
  assert.notEqual(infoB.queue, infoA.queue);
  const c = await spawnClient();
  await assert.rejects(
    c.call('connect', { socket: rig.socket }),
    /ENOSPC.*quarantined \(1 whose reset did not finish\)/,
  );
  assert.deepEqual((await rig.broker.driver.status()).quarantinedQueues, [infoA.queue]);
});

test('a reclaimed lease whose queue resets but never reports IDLE is quarantined naming Q_STATUS; the queue is not', async () => {
  const a = await spawnClient();
  const info = (await a.call('connect', { socket: rig.socket })).info;
  const lease = rig.broker.leases.get(info.lease)!;
  // A device whose queue finishes its reset but stays busy: its Q_STATUS (the upper half of the quiesce's
  // 8-byte read of Q_CTRL and Q_STATUS) never shows IDLE.
  const device = rig.broker.device;
  const read64 = device.read64.bind(device);
  device.read64 = async (index, offset) => {
    const v = await read64(index, offset);
    return offset === qcfg(info.queue, Q.CTRL) ? v & ~(BigInt(Q_STATUS.IDLE) << 32n) : v;
  };
  await a.exit();
  await until('the lease to be quarantined', () => lease.state === 'quarantined', 5000);
  device.read64 = read64;
  assert.match(
    lease.quarantineReason ?? '',
    new RegExp(
      `quiesce: ETIMEDOUT: sa1: queue ${info.queue} quiesce \\(Q_STATUS.IDLE\\) did not finish in 100 ms \\(last read 0x0\\)`,
    ),
  );
  // The reset finished: the driver's pool has no queue quarantined; the lease holds this one.
  assert.deepEqual((await rig.broker.driver.status()).quarantinedQueues, []);
});

test('a grant whose queue reset never finishes is refused with ETIMEDOUT, and that queue is not offered again', async () => {
  await rig.sim.inject({ kind: 'stuckReset', queue: 0 });
  const a = await spawnClient();
  await assert.rejects(a.call('connect', { socket: rig.socket }), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ETIMEDOUT');
    assert.match(err.message, /queue 0 reset \(Q_CTRL.RESET\) did not finish in 100 ms/);
    return true;
  });
  const infoB = (await a.call('connect', { socket: rig.socket })).info;
  assert.equal(infoB.queue, 1, 'the stuck queue 0 was skipped');
  assert.equal(rig.broker.leases.all().length, 1);
});

test('a device reset that never finishes leaves the device unleasable, with the reason', async () => {
  await rig.sim.inject({ kind: 'stuckReset' });
  await rig.sim.inject({ kind: 'hang' });
  await until('recovery to fail', () => rig.audit.some((e) => e.event === 'recovery-failed'), 5000);
  const entry = rig.audit.find((e) => e.event === 'recovery-failed')!;
  assert.match(
    entry.error,
    /ETIMEDOUT: sa1: device reset \(CONTROL.RESET\) did not finish in 1000 ms \(last read 0x2\)/,
  );
  const a = await spawnClient();
  await assert.rejects(a.call('connect', { socket: rig.socket }), /EAGAIN.*did not recover: ETIMEDOUT/);
});
