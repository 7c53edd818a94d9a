// Lifetimes: reclaim after SIGKILL, after a closed session with a slice still
// mapped (revoke on and off), and the owner's revoke with a deadline.
import assert from 'node:assert/strict';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const leaseOf = (rig: Rig, pid: number) => rig.broker.leases.all().find((l) => l.ctx.pid === pid);

// Each test has its own rig (a fresh simulator and broker) and its own clients, so any one of them runs alone
// (--test-name-pattern) exactly as it runs in the file.
let clients: ClientProc[] = [];
const spawnClient = async (): Promise<ClientProc> => {
  const c = await ClientProc.spawn();
  clients.push(c);
  return c;
};
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
});

describe('with revocable slices (the default)', () => {
  let rig: Rig;
  beforeEach(async () => {
    rig = await startRig({ sim: { numQueues: 2 } });
  });
  afterEach(async () => rig.close());

  test('SIGKILL of a client holding mappings: reclaimed, unmapped at the device, and the queue is leased again', async () => {
    const c = await spawnClient();
    const info = (await c.call('connect', { socket: rig.socket })).info;
    for (let i = 0; i < 4; i++) await c.call('alloc', { name: `b${i}`, size: 8192 });
    const lease = leaseOf(rig, c.pid)!;
    assert.equal(lease.mappings.size, 4);
    const mapped = [...lease.mappings.values()];
    await c.kill('SIGKILL');
    await until('the lease to be released', () => lease.state === 'released');
    assert.equal(rig.broker.leases.all().length, 0);
    const rec = rig.audit.find((e) => e.event === 'reclaim' && e.lease === lease.id);
    assert.ok(rec, 'a reclaim was audited');
    assert.match(rec.reason, /exited|session closed/);
    // The device holds none of the client's memory: the same IOVAs map again without EEXIST.
    const { MemFd } = await import('../../src/sys/index.js');
    for (const m of mapped) {
      using mem = MemFd.create('probe', { size: Number(m.size) });
      await rig.device.dmaMap({
        fd: mem.fd,
        offset: 0n,
        iova: m.iova,
        size: m.size,
        read: true,
        write: true,
      });
      await rig.device.dmaUnmap(m.iova, m.size);
    }
    // The freed queue is leased again.
    const d = await spawnClient();
    const again = (await d.call('connect', { socket: rig.socket })).info;
    assert.equal(again.queue, info.queue);
    await d.exit();
    await until('the second lease to end', () => rig.broker.leases.all().length === 0);
  });

  test('closing the session with a slice still mapped: revoked at once, leased again, old mapping reads revoked', async () => {
    const c = await spawnClient();
    const info = (await c.call('connect', { socket: rig.socket })).info;
    await c.call('pageWrite', { offset: 0x2000, value: 0x5eed });
    await c.call('dropSessionKeepMapping');
    await until('the lease to be released', () => rig.broker.leases.all().length === 0);
    assert.equal(await c.call('keptRevoked'), false, 'not touched yet: the guard flags it on first access');
    assert.equal(await c.call('keptRead', { offset: 0x2000 }), 0, 'the revoked mapping reads zero');
    assert.equal(await c.call('keptRevoked'), true);
    const d = await spawnClient();
    const again = (await d.call('connect', { socket: rig.socket })).info;
    assert.equal(again.queue, info.queue, 'the same queue, leased again at once');
    assert.equal(await d.call('pageRead', { offset: 0x2000 }), 0, 'the new holder sees fresh backing');
    await Promise.all([c.exit(), d.exit()]);
  });

  test('revoke with a deadline: the client gets the notice, then the broker reclaims by force', async () => {
    const c = await spawnClient();
    const info = (await c.call('connect', { socket: rig.socket })).info;
    rig.broker.leases.revoke(info.lease, 300);
    const lease = rig.broker.leases.get(info.lease)!;
    assert.equal(lease.state, 'revoking');
    await until(
      'the notice to arrive',
      async () => (await c.call('events')).includes('revoke-requested'),
      2000,
    );
    // This client ignores the notice: at the deadline the lease is taken.
    await until('the forced reclaim', () => lease.state === 'released', 3000);
    assert.ok(
      rig.audit.some((e) => e.event === 'reclaim' && e.lease === info.lease && /deadline/.test(e.reason)),
    );
    await until('the client to see the session end', async () =>
      (await c.call('events')).includes('disconnected'),
    );
    assert.ok((await c.call('events')).includes('revoked'), 'the client was told its lease was revoked');
    await c.exit();
  });
});

describe('with revoke turned off (a device or kernel that cannot revoke)', () => {
  let rig: Rig;
  beforeEach(async () => {
    rig = await startRig({ sim: { numQueues: 1 }, config: { lifetime: { revoke: false } } });
  });
  afterEach(async () => rig.close());

  test('the slice stays awaiting-release until the client unmaps it, and only then is leased again', async () => {
    const c = await spawnClient();
    await c.call('connect', { socket: rig.socket });
    const lease = leaseOf(rig, c.pid)!;
    await c.call('dropSessionKeepMapping');
    await until('awaiting-release', () => lease.state === 'awaiting-release');
    // The only queue is held back: a new lease is refused while the old mapping lives.
    const d = await spawnClient();
    await assert.rejects(d.call('connect', { socket: rig.socket }), /ENOSPC|all 1 queues/);
    assert.equal(lease.state, 'awaiting-release');
    assert.equal(await c.call('keptRevoked'), false);
    await c.call('unmapKept');
    await until('the release to be observed', () => lease.state === 'released');
    const info = (await d.call('connect', { socket: rig.socket })).info;
    assert.equal(info.queue, 0);
    await Promise.all([c.exit(), d.exit()]);
  });
});
