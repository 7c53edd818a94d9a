// The policy's per-uid usage (leases, mappings, mapped bytes) is kept as counters by the lease table, not
// walked per request: these check the counters against a walk of the table through grant, map, unmap,
// revoke, reclaim at process exit, and a lease that ends with its mappings still in place; and only a reclaim
// can take a lease out of the table.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { LeaseMappings } from '../../src/broker/lease-usage.js';
import { LeaseTable } from '../../src/broker/leases.js';
import type { Usage } from '../../src/broker/policy.js';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const uid = process.getuid!();
const ctx = { pid: process.pid, uid, gid: process.getgid!(), exe: null, cgroup: null };

/** What the usage was before it was kept as counters: a walk over every live lease of the uid. */
function walk(table: LeaseTable): Usage {
  const u: Usage = { leases: 0, mappedBytes: 0n, mappings: 0 };
  for (const l of table.all()) {
    if (l.ctx.uid !== uid || !l.live) continue;
    u.leases++;
    for (const m of l.mappings.values()) u.mappedBytes += m.size;
    u.mappings += l.mappings.size;
  }
  return u;
}

function released(table: LeaseTable, id: string): Promise<void> {
  return new Promise((resolve) => {
    const on = (l: { id: string }) => {
      if (l.id !== id) return;
      table.off('released', on);
      resolve();
    };
    table.on('released', on);
  });
}

test('usage counters follow grant, map, unmap, revoke and reclaim', async () => {
  const rig = await startRig({ config: { policy: { rule: [{ uid, max_leases: 16, max_mappings: 64 }] } } });
  const table = rig.broker.leases;
  const check = (what: string) => assert.deepEqual(table.usage(ctx), walk(table), `after ${what}`);
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    check('nothing');
    assert.deepEqual(table.usage(ctx), { leases: 0, mappedBytes: 0n, mappings: 0 });
    const la = ((await a.call('connect', { socket: rig.socket })) as { info: { lease: string } }).info.lease;
    check('a grant');
    await a.call('alloc', { name: 'x', size: 4096 });
    await a.call('alloc', { name: 'y', size: 3 * 4096 });
    check('two maps');
    const held = table.usage(ctx);
    assert.equal(held.leases, 1);
    assert.ok(
      held.mappings >= 2 && held.mappedBytes >= 4n * 4096n,
      `two buffers mapped: ${JSON.stringify(walk(table), (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`,
    );
    await a.call('free', { name: 'x' });
    check('an unmap');
    const lb = ((await b.call('connect', { socket: rig.socket })) as { info: { lease: string } }).info.lease;
    await b.call('alloc', { name: 'z', size: 8192 });
    check('a second lease with a map');
    assert.equal(table.usage(ctx).leases, 2);

    // Revoke with no deadline: the lease leaves `active`, reclaim unmaps and releases it.
    const gone = released(table, la);
    table.revoke(la, 0);
    check('a revoke');
    await gone;
    check('the revoked lease released');
    assert.equal(table.usage(ctx).leases, 1);

    // Process exit: the session ends, reclaim runs with the mapping still in place.
    const goneB = released(table, lb);
    await b.kill();
    await goneB;
    check('reclaim at exit');
    assert.deepEqual(table.usage(ctx), { leases: 0, mappedBytes: 0n, mappings: 0 });
  } finally {
    await Promise.all([a.exit(), b.exit()]);
    await rig.close();
  }
});

test('a lease mapping table keeps its byte total through replace, delete and clear', () => {
  const m = new LeaseMappings();
  let changes = 0;
  m.onChange = () => changes++;
  const entry = (iova: bigint, size: bigint) => ({ iova, deviceIova: iova, size, read: true, write: true });
  m.set(0x1000n, entry(0x1000n, 0x1000n));
  m.set(0x10000n, entry(0x10000n, 0x4000n));
  assert.equal(m.bytes, 0x5000n);
  m.set(0x1000n, entry(0x1000n, 0x2000n)); // the same IOVA again replaces, it does not add
  assert.equal(m.bytes, 0x6000n);
  assert.equal(m.delete(0x20000n), false);
  assert.equal(m.bytes, 0x6000n);
  assert.equal(m.delete(0x10000n), true);
  assert.equal(m.bytes, 0x2000n);
  m.clear();
  assert.equal(m.bytes, 0n);
  assert.equal(changes, 5);
});

test("an embedder's lease table (broker.leases) has no way to drop a lease, or its counts, without its reclaim", () => {
  // Taking a lease out, waiting out an upgrade's hold past its slices' release and the device's loss are
  // the reclaim's alone (lease-reclaim.ts gets them from the table): a public remove() would leave the lease's
  // resources unreclaimed and its uid's counts off.
  for (const name of ['remove', 'pastRelease', 'lostOf'])
    assert.equal(name in LeaseTable.prototype, false, `LeaseTable.${name} is not public`);
});
