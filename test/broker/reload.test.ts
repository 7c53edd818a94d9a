// Policy and config reload without dropping leases: `devlease reload` (the
// admin op) re-reads the config file; a tighter policy applies to new
// requests at once while existing clients keep working (on_reload = "keep")
// or are revoked with notice (on_reload = "revoke"); a bad file changes
// nothing and says why, to the caller and in the log. Every grant and denial
// names the sha256 of the config that decided it.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { ReloadOutcome } from '../../src/broker/reload.js';
import { adminRequest } from '../../src/cli/admin.js';
import { ClientProc, type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { stopped } from '../helpers/proc-stat.js';
import { until } from '../interop/helpers/peers.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-reload-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});
const uid = process.getuid!();
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

function policy(maxLeases: number, extra = ''): string {
  return `[policy]\n${extra}\n[[policy.rule]]\nuid = ${uid}\nmax_leases = ${maxLeases}\n`;
}

async function withRig(
  text: string,
  fn: (rig: Rig, file: string, admin: string, logs: string[]) => Promise<void>,
): Promise<void> {
  const file = join(dir, `broker-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, text);
  const logs: string[] = [];
  const rig = await startRig({ configFile: file, log: (m) => logs.push(m) });
  try {
    await fn(rig, file, join(rig.broker.dir, 'admin.sock'), logs);
  } finally {
    await rig.close();
  }
}

test('a reload that tightens the policy applies to new requests; existing clients stay connected and working', async () => {
  const before = policy(2);
  await withRig(before, async (rig, file, admin) => {
    const [a, b, c] = await Promise.all([ClientProc.spawn(), ClientProc.spawn(), ClientProc.spawn()]);
    try {
      const la = (await a.call('connect', { socket: rig.socket })).info.lease;
      const lb = (await b.call('connect', { socket: rig.socket })).info.lease;
      const tighter = policy(1);
      writeFileSync(file, tighter);
      const out = (await adminRequest(admin, { op: 'reload' })) as ReloadOutcome;
      assert.equal(out.config.config, sha(tighter));
      assert.equal(out.previous.config, sha(before));
      assert.equal(out.onReload, 'keep');
      assert.deepEqual(
        out.refused.map((r: { lease: string; action: string }) => [r.lease, r.action]),
        [[lb, 'kept']],
        'the lease over the new limit is named, and kept; the older one is within it',
      );

      const err = await c.call('connect', { socket: rig.socket }).catch((e) => e);
      assert.equal(err.code, 'EACCES', 'the new limit applies to a new request');
      assert.match(err.message, /the limit is 1/);

      // Both clients are still connected and their leases work: DMA maps pass through the broker.
      for (const p of [a, b]) {
        await p.call('alloc', { name: 'x', size: 4096 });
        assert.deepEqual(await p.call('events'), [], 'no notice, no disconnect');
      }
      assert.deepEqual(
        rig.broker.leases.all().map((l) => [l.id, l.state]),
        [
          [la, 'active'],
          [lb, 'active'],
        ],
      );
      assert.ok(!rig.audit.some((e) => e.event === 'reclaim' || e.event === 'revoke'));

      const grants = rig.audit.filter((e) => e.event === 'grant');
      assert.deepEqual(
        grants.map((g) => g.decidedBy.config),
        [sha(before), sha(before)],
      );
      const deny = rig.audit.find((e) => e.event === 'deny' && e.pid === c.pid);
      assert.equal(deny?.decidedBy.config, sha(tighter), 'the denial names the reloaded config');
      assert.ok(rig.audit.some((e) => e.event === 'reload-kept' && e.lease === lb));
    } finally {
      await Promise.all([a.exit(), b.exit(), c.exit()]);
    }
  });
});

test('a bad config is refused with the reason, to the caller and in the log, and changes nothing', async () => {
  const good = policy(1);
  await withRig(good, async (rig, file, admin, logs) => {
    const bad: [string, RegExp][] = [
      [
        `${policy(1)}\n[[policy.rule]]\nuid = 5\nmax_leases = "lots"\n`,
        /policy\.rule\[1\]\.max_leases: must be "fair"/,
      ],
      ['[policy\n', /not valid TOML/],
      [policy(1, 'on_reload = "sometimes"'), /policy\.on_reload: must be "keep" or "revoke"/],
      [`${policy(5)}\n[sockets]\nmode = 0o600\n`, /sockets: changed, and only a restart applies it/],
      [
        policy(5, `module = "${join(dir, 'no-such-policy.mjs')}"`),
        /policy\.module: cannot read .*no-such-policy\.mjs: ENOENT/,
      ],
    ];
    for (const [text, why] of bad) {
      writeFileSync(file, text);
      const err = await adminRequest(admin, { op: 'reload' }).catch((e) => e);
      assert.ok(err instanceof Error, `refused: ${text}`);
      assert.equal((err as { code?: string }).code, 'EINVAL');
      assert.match(err.message, /reload refused, nothing changed/);
      assert.match(err.message, why);
      assert.ok(
        logs.some((l) => why.test(l)),
        `the log says why: ${logs.join('\n')}`,
      );
      const refused = rig.audit.filter((e) => e.event === 'reload-refused').at(-1);
      assert.match(refused?.error, why);
    }
    // Nothing changed: still the first config, with its limit of 1.
    assert.equal(rig.broker.configIdentity.config, sha(good));
    const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
    try {
      await a.call('connect', { socket: rig.socket });
      const err = await b.call('connect', { socket: rig.socket }).catch((e) => e);
      assert.equal(err.code, 'EACCES', 'the old limit (1) still holds, not a refused file’s 5');
      assert.equal(rig.audit.find((e) => e.event === 'grant')?.decidedBy.config, sha(good));
    } finally {
      await Promise.all([a.exit(), b.exit()]);
    }
  });
});

test('on_reload = "revoke": a lease the reloaded policy refuses gets a revoke notice and is reclaimed at the deadline', async () => {
  await withRig(policy(2), async (rig, file, admin) => {
    const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
    try {
      const la = (await a.call('connect', { socket: rig.socket })).info.lease;
      const lb = (await b.call('connect', { socket: rig.socket })).info.lease;
      writeFileSync(file, policy(1, 'on_reload = "revoke"\non_reload_deadline_ms = 300'));
      const out = (await adminRequest(admin, { op: 'reload' })) as ReloadOutcome;
      assert.deepEqual(
        out.refused.map((r: { lease: string; action: string }) => [r.lease, r.action]),
        [[lb, 'revoked']],
      );
      const revoke = rig.audit.find((e) => e.event === 'revoke' && e.lease === lb);
      assert.equal(revoke?.deadlineMs, 300);
      assert.match(revoke?.reason, /the reloaded policy refuses it: .*the limit is 1/);
      await until(
        'b to be told (REQ notice)',
        async () => (await b.call('events')).includes('revoke-requested'),
        20_000,
      );
      await until('b to be reclaimed', () => !rig.broker.leases.get(lb), 20_000);
      assert.equal(rig.broker.leases.get(la)?.state, 'active', 'the lease within the new limit stays');
      assert.deepEqual(await a.call('events'), []);
    } finally {
      await Promise.all([a.exit(), b.exit()]);
    }
  });
});

test('a changed policy module is imported afresh on reload, and decisions name its sha256', async () => {
  const mod = join(dir, 'policy.mjs');
  const v1 = 'export function lease() { return { allow: true }; }\n';
  const v2 = "export function lease() { return { allow: false, reason: 'closed for maintenance' }; }\n";
  writeFileSync(mod, v1);
  await withRig(policy(4, `module = "${mod}"`), async (rig, _file, admin) => {
    const [a, b] = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
    try {
      await a.call('connect', { socket: rig.socket });
      writeFileSync(mod, v2); // the same path, the same config file: only the module changed
      const out = (await adminRequest(admin, { op: 'reload' })) as ReloadOutcome;
      assert.equal(out.config.policyModule, sha(v2));
      assert.equal(out.previous.policyModule, sha(v1));
      assert.equal(out.refused.length, 1, 'the new module refuses the existing lease too (kept)');
      const err = await b.call('connect', { socket: rig.socket }).catch((e) => e);
      assert.equal(err.code, 'EACCES');
      assert.match(err.message, /closed for maintenance/);
      const deny = rig.audit.find((e) => e.event === 'deny' && e.pid === b.pid);
      assert.equal(deny?.decidedBy.policyModule, sha(v2));
      assert.equal(rig.audit.find((e) => e.event === 'grant')?.decidedBy.policyModule, sha(v1));
    } finally {
      await Promise.all([a.exit(), b.exit()]);
    }
  });
});

// A lease that ends while the reload's policy hook runs for the leases before it: the reload went on to revoke
// it by id, which threw ENOENT — the new policy was in place, but the leases after it were not revoked, no
// `reload` record was written, and the caller was told "no lease".
test('on_reload = "revoke": a refused lease that ends while the new policy is being asked does not stop the others being revoked', async () => {
  const mod = join(dir, 'slow-policy.mjs');
  writeFileSync(mod, 'export function lease() { return { allow: true }; }\n');
  await withRig(policy(4, `module = "${mod}"`), async (rig, file, admin) => {
    const clients = await Promise.all([ClientProc.spawn(), ClientProc.spawn(), ClientProc.spawn()]);
    try {
      const ids: string[] = [];
      for (const c of clients) ids.push((await c.call('connect', { socket: rig.socket })).info.lease);
      // The new module refuses everything, slowly, and says when it is first asked: the first lease ends while
      // it is asked about.
      const slow = join(dir, 'slow-policy-2.mjs');
      const asked = join(dir, 'slow-policy-asked');
      writeFileSync(
        slow,
        "import { appendFileSync } from 'node:fs';\n" +
          `export async function lease() { appendFileSync(${JSON.stringify(asked)}, 'x'); ` +
          "await new Promise((r) => setTimeout(r, 3000)); return { allow: false, reason: 'closed' }; }\n",
      );
      writeFileSync(
        file,
        // Deadlines past its 3 s: a hook that times out no longer counts as a refusal, it refuses the reload.
        policy(
          4,
          `module = "${slow}"\non_reload = "revoke"\non_reload_deadline_ms = 60000\n` +
            'hook_timeout_ms = 10000\nrecheck_timeout_ms = 60000',
        ),
      );
      const reloaded = adminRequest(admin, { op: 'reload' }, 60_000) as Promise<ReloadOutcome>;
      await until('the new policy to be asked about the first lease', () => existsSync(asked), 20_000);
      await clients[0]!.exit();
      await until('the first lease to end', () => !rig.broker.leases.get(ids[0]!), 20_000);
      const out = await reloaded;
      assert.deepEqual(
        out.refused.map((r) => [r.lease, r.action]),
        [
          [ids[1], 'revoked'],
          [ids[2], 'revoked'],
        ],
      );
      for (const id of ids.slice(1)) assert.equal(rig.broker.leases.get(id)?.state, 'revoking');
      assert.ok(
        rig.audit.some((e) => e.event === 'reload'),
        'the reload is audited',
      );
    } finally {
      await Promise.all(clients.map((c) => c.exit()));
    }
  });
});

// A grant that passed the old policy and was still being programmed when the reload checked the leases: added
// after the check, it was never checked, and on_reload = "revoke" did not reach it.
test('on_reload = "revoke": a lease still being granted when the policy is reloaded is checked against the new policy too', async () => {
  await withRig(policy(4), async (rig, file, admin) => {
    const c = await ClientProc.spawn();
    const driver = rig.broker.driver;
    const activate = driver.activate.bind(driver);
    const oldPolicy = rig.broker.leases.policy;
    // The device stops as the grant's programming goes out; it goes on once the reload swapped the policy.
    driver.activate = (res) => {
      rig.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
      return activate(res);
    };
    try {
      writeFileSync(file, policy(0, 'on_reload = "revoke"\non_reload_deadline_ms = 60000'));
      const granted = c.call('connect', { socket: rig.socket });
      await until('the grant to reach the device', () => stopped(rig.sim.pid), 20_000);
      const reloaded = adminRequest(admin, { op: 'reload' }, 60_000) as Promise<ReloadOutcome>;
      await until('the new policy to be in place', () => rig.broker.leases.policy !== oldPolicy, 20_000);
      rig.sim.process.kill('SIGCONT');
      const lease = (await granted).info.lease;
      const out = await reloaded;
      assert.deepEqual(
        out.refused.map((r) => [r.lease, r.action]),
        [[lease, 'revoked']],
      );
      assert.equal(rig.broker.leases.get(lease)?.state, 'revoking');
    } finally {
      rig.sim.process.kill('SIGCONT');
      driver.activate = activate;
      await c.exit();
    }
  });
});
