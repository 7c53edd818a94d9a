// Reclaim's order (issue 16): the holder's slices are revoked before the
// device is quiesced, so a holder loses its queue page even while the
// device is slow to stop — the revoke does not wait on the quiesce. Shown
// with a queue reset that does not finish (the simulator's stuckReset
// injection): a mapping of the slice kept past the session is dead while the
// quiesce still waits, and once the reset finishes the lease is released,
// not quarantined.
import assert from 'node:assert/strict';
import { after, afterEach, beforeEach, test } from 'node:test';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../../src/vfio/uapi/vfio.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let rig: Rig;
let clients: ClientProc[] = [];
beforeEach(async () => {
  // A quiesce deadline far past the waits below: the quiesce is still waiting when the test looks.
  rig = await startRig({ sim: { numQueues: 2 }, config: { lifetime: { quiesce_timeout_ms: 60_000 } } });
});
afterEach(async () => {
  await Promise.all(clients.map((c) => c.kill()));
  clients = [];
  await rig.close();
});

test('a reclaimed holder loses its queue page mapping while the quiesce is still waiting on the device', async () => {
  const c = await ClientProc.spawn();
  clients.push(c);
  const info = (await c.call('connect', { socket: rig.socket })).info;
  assert.equal(await c.call('pageRead', { offset: 0 }), 0, 'the queue page is mapped and readable');
  const lease = rig.broker.leases.get(info.lease)!;
  await rig.sim.inject({ kind: 'stuckReset', queue: info.queue });
  // The session ends (reclaim starts) with a mapping of the queue page slice kept past it.
  await c.call('dropSessionKeepMapping');
  await until(
    "the holder's queue page mapping to be revoked",
    async () => {
      await c.call('keptRead', { offset: 0 }); // a guarded mapping notices the revoke on access
      return (await c.call('keptRevoked')) === true;
    },
    20_000,
  );
  assert.equal(lease.state, 'reclaiming', 'the quiesce is still waiting for the stuck queue reset');
  await rig.sim.inject({ kind: 'stuckReset', queue: info.queue, clear: true });
  await until('the lease to be released', () => rig.broker.leases.get(info.lease) === undefined, 20_000);
  assert.equal(lease.state, 'released', `not quarantined: ${lease.quarantineReason ?? ''}`);
  await c.call('unmapKept');
  const released = rig.audit.find((e) => e.event === 'released' && e.lease === info.lease);
  assert.ok(released, 'the release is audited');
});

test('a lease without IOVA maps is reclaimed in one device round trip: every command goes out before any answer', async () => {
  const c = await ClientProc.spawn();
  clients.push(c);
  const info = (await c.call('connect', { socket: rig.socket })).info;
  const lease = rig.broker.leases.get(info.lease)!;
  assert.equal(lease.mappings.size, 0, 'the lease maps nothing');
  assert.ok(lease.resources.vectors.length > 0, 'the lease has a vector to unwire');
  // Each reclaim command as issued and as answered, in order (register reads aside: the driver's heartbeat
  // reads one now and then). The prepared slice fd (sliceFds) is asked for behind them and awaited by nothing.
  const log: string[] = [];
  const unwires: unknown[][] = [];
  const dev = rig.broker.device as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const originals = new Map<string, (...a: unknown[]) => Promise<unknown>>();
  for (const name of ['revokeSlice', 'write32', 'read64', 'setIrqs', 'dmaUnmap']) {
    const orig = dev[name]!;
    originals.set(name, orig);
    dev[name] = (...a: unknown[]) => {
      log.push(`issue ${name}`);
      if (name === 'setIrqs') unwires.push(a);
      return orig.apply(rig.broker.device, a).finally(() => log.push(`answer ${name}`));
    };
  }
  try {
    rig.broker.leases.revoke(info.lease, 0, 'test: revoke with deadline 0');
    await until('the lease to be released', () => rig.broker.leases.get(info.lease) === undefined, 20_000);
  } finally {
    for (const [name, orig] of originals) dev[name] = orig;
  }
  assert.equal(lease.state, 'released', `not quarantined: ${lease.quarantineReason ?? ''}`);
  const firstAnswer = log.findIndex((e) => e.startsWith('answer'));
  assert.deepEqual(
    log.slice(0, firstAnswer),
    ['issue revokeSlice', 'issue write32', 'issue read64', 'issue setIrqs'],
    `the revoke, the quiesce (its write and first read) and the vector's unwiring go out together: ${log.join(', ')}`,
  );
  // The one SET_IRQS is the lease's vector disconnected: MSI-X, its vector, no eventfd.
  assert.deepEqual(unwires, [[VFIO_PCI_MSIX_IRQ_INDEX, lease.resources.vectors[0], [null]]]);
  assert.equal(
    log.filter((e) => e.startsWith('issue')).length,
    4,
    `no command after the answers: ${log.join(', ')}`,
  );
});
