// Policy: declarative per-uid limits and a module's hooks, each denial audited with its reason.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientProc, type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
const uid = process.getuid!();

test('a uid over its lease limit is denied with the reason; the audit log says why', async () => {
  const rig: Rig = await startRig({ config: { policy: { rule: [{ uid, max_leases: 1 }] } } });
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    await a.call('connect', { socket: rig.socket });
    const err = await b.call('connect', { socket: rig.socket }).catch((e) => e);
    assert.ok(err instanceof Error, 'the second lease must be refused');
    assert.equal((err as { code?: string }).code, 'EACCES');
    assert.match(err.message, /already holds 1 lease\(s\); the limit is 1/);
    const deny = rig.audit.find((e) => e.event === 'deny');
    assert.ok(deny);
    assert.equal(deny.pid, b.pid);
    assert.equal(deny.uid, uid);
    assert.match(deny.reason, /limit is 1/);
  } finally {
    await Promise.all([a.exit(), b.exit()]);
    await rig.close();
  }
});

test('concurrent requests cannot overshoot a lease limit', async () => {
  const rig = await startRig({ config: { policy: { rule: [{ uid, max_leases: 1 }] } } });
  const clients = await Promise.all([ClientProc.spawn(), ClientProc.spawn(), ClientProc.spawn()]);
  try {
    const results = await Promise.allSettled(clients.map((c) => c.call('connect', { socket: rig.socket })));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one lease granted');
    for (const r of results) {
      if (r.status === 'rejected') assert.equal((r.reason as { code?: string }).code, 'EACCES');
    }
  } finally {
    await Promise.all(clients.map((c) => c.exit()));
    await rig.close();
  }
});

test('a mapping limit stops DMA_MAP with the reason', async () => {
  const rig = await startRig({ config: { policy: { rule: [{ uid, max_mappings: 1 }] } } });
  const a = await ClientProc.spawn();
  try {
    await a.call('connect', { socket: rig.socket });
    await a.call('alloc', { name: 'one', size: 4096 });
    const err = await a.call('alloc', { name: 'two', size: 4096 }).catch((e) => e);
    assert.equal(err.code, 'EACCES');
    assert.match(err.message, /mapping limit reached: 1 of 1/);
  } finally {
    await a.exit();
    await rig.close();
  }
});

test('a policy module denies by its own rule; a throwing hook denies and is logged', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-policy-'));
  const mod = join(dir, 'policy.mjs');
  writeFileSync(
    mod,
    `export function lease(ctx, req) {
       if (req.devmemGranules > 2) return { allow: false, reason: 'no more than 2 granules for ' + ctx.exe };
       if (req.explode) throw new Error('boom');
       return { allow: true };
     }
     export function map(ctx, req) { return req.size > 65536n ? { allow: false, reason: 'maps over 64 KiB need approval' } : { allow: true }; }`,
  );
  const rig = await startRig({ config: { policy: { module: mod } } });
  const c = await ClientProc.spawn();
  try {
    const denied = await c
      .call('connect', { socket: rig.socket, request: { devmemGranules: 3 } })
      .catch((e) => e);
    assert.equal(denied.code, 'EACCES');
    assert.match(denied.message, /policy module: no more than 2 granules for \/.*node/);
    const thrown = await c
      .call('connect', { socket: rig.socket, request: { explode: true } })
      .catch((e) => e);
    assert.equal(thrown.code, 'EACCES');
    assert.match(thrown.message, /lease\(\) failed: boom/);
    assert.ok(
      rig.audit.some((e) => e.event === 'policy-hook-failed' && e.hook === 'lease' && /boom/.test(e.error)),
    );
    await c.call('connect', { socket: rig.socket, request: { devmemGranules: 1 } });
    await c.call('alloc', { name: 'small', size: 4096 });
    const big = await c.call('alloc', { name: 'big', size: 1 << 20 }).catch((e) => e);
    assert.match(big.message, /maps over 64 KiB need approval/);
  } finally {
    await c.exit();
    await rig.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a module's veto of a DMA_UNMAP reaches the client and leaves the mapping in place", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-policy-'));
  const mod = join(dir, 'policy.mjs');
  writeFileSync(
    mod,
    `export function map(ctx, req) { return req.op === 'unmap' ? { allow: false, reason: 'unmaps need approval' } : { allow: true }; }`,
  );
  const rig = await startRig({ config: { policy: { module: mod } } });
  const c = await ClientProc.spawn();
  try {
    await c.call('connect', { socket: rig.socket });
    await c.call('alloc', { name: 'kept', size: 4096 });
    const err = await c.call('free', { name: 'kept' }).catch((e) => e);
    assert.equal(err.code, 'EACCES');
    assert.match(err.message, /policy module: unmaps need approval/);
    const lease = rig.broker.leases.all()[0]!;
    assert.equal(lease.mappings.size, 1, 'the vetoed mapping stays');
  } finally {
    await c.exit();
    await rig.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
