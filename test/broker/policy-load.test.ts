// A policy module that does not load, or whose hooks fail while a reload checks the live leases: the start is
// refused naming policy.module, a reload is refused and the old policy stays; nothing waits without end, and a
// policy service that is down revokes nothing. A relative policy.module is found next to the config file.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { ClientProc, type Rig, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-policy-load-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});
const uid = process.getuid!();
const module = (name: string, text: string): string => {
  writeFileSync(join(dir, name), text);
  return name; // relative: resolved against the config file's directory (dir)
};
const allow = module('allow.mjs', 'export function lease() { return { allow: true }; }\n');
// Its top-level code waits for something that never answers (a policy service that is down).
const stuck = module(
  'stuck.mjs',
  `${'export function lease() { return { allow: true }; }\n'}await new Promise(() => {});\n`,
);

function config(extra: string): string {
  const file = join(dir, `broker-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, `[policy]\n${extra}\n[[policy.rule]]\nuid = ${uid}\nmax_leases = 4\n`);
  return file;
}

test('a relative policy.module is the one next to the config file, whatever the working directory', async () => {
  const deny = module(
    'deny.mjs',
    "export function lease() { return { allow: false, reason: 'next to the file' }; }\n",
  );
  assert.notEqual(process.cwd(), dir);
  const rig = await startRig({ configFile: config(`module = "${deny}"`) });
  const c = await ClientProc.spawn();
  try {
    const err = await c.call('connect', { socket: rig.socket }).catch((e) => e);
    assert.equal(err.code, 'EACCES');
    assert.match(err.message, /next to the file/);
  } finally {
    await c.exit();
    await rig.close();
  }
});

// A timeout of the test's own: without the deadline the start (or the reload) waited for good.
test('a policy module that does not load refuses the start, naming policy.module', {
  timeout: 30_000,
}, async () => {
  const broken = module('broken.mjs', 'export function lease( {\n');
  await assert.rejects(startRig({ configFile: config(`module = "${broken}"`) }), (err: Error) => {
    assert.equal((err as { code?: string }).code, 'ERR_DEVLEASE_CONFIG');
    assert.match(err.message, /^config: policy\.module: /);
    return true;
  });
  const t0 = Date.now();
  await assert.rejects(
    startRig({ configFile: config(`module = "${stuck}"\nload_timeout_ms = 300`) }),
    /^ConfigError: config: policy\.module: .*stuck\.mjs did not load within 300 ms \(policy\.load_timeout_ms\)/,
  );
  assert.ok(Date.now() - t0 < 5_000, 'refused at the deadline');
});

async function withRig(file: string, fn: (rig: Rig, admin: string) => Promise<void>): Promise<void> {
  const rig = await startRig({ configFile: file });
  try {
    await fn(rig, join(rig.broker.dir, 'admin.sock'));
  } finally {
    await rig.close();
  }
}

test('a reload to a module that never loads is refused at policy.load_timeout_ms, and the next reload runs', {
  timeout: 30_000,
}, async () => {
  const file = config(`module = "${allow}"`);
  await withRig(file, async (rig, admin) => {
    const before = rig.broker.configIdentity.config;
    writeFileSync(file, `[policy]\nmodule = "${stuck}"\nload_timeout_ms = 300\n`);
    const err = (await adminRequest(admin, { op: 'reload' }, 5_000).catch((e) => e)) as Error & {
      code?: string;
    };
    assert.equal(err.code, 'EINVAL');
    assert.match(err.message, /policy\.module: .*stuck\.mjs did not load within 300 ms/);
    assert.equal(rig.broker.configIdentity.config, before, 'nothing changed');
    // Not queued behind it: a good file reloads at once.
    writeFileSync(file, `[policy]\nmodule = "${allow}"\nhook_timeout_ms = 300\n`);
    const out = (await adminRequest(admin, { op: 'reload' }, 5_000)) as { refused: unknown[] };
    assert.deepEqual(out.refused, []);
  });
});

test('on_reload = "revoke" with a policy hook that fails: the reload is refused, the leases are kept', async () => {
  const file = config(`module = "${allow}"`);
  const down = module(
    'down.mjs',
    "export function lease() { throw new Error('policy service unreachable'); }\n",
  );
  await withRig(file, async (rig, admin) => {
    const clients = await Promise.all([ClientProc.spawn(), ClientProc.spawn()]);
    try {
      const ids: string[] = [];
      for (const c of clients) ids.push((await c.call('connect', { socket: rig.socket })).info.lease);
      const before = rig.broker.configIdentity.policyModule;
      writeFileSync(file, `[policy]\nmodule = "${down}"\non_reload = "revoke"\n`);
      const err = await adminRequest(admin, { op: 'reload' }, 10_000).catch((e) => e);
      assert.ok(err instanceof Error, 'refused');
      assert.equal((err as { code?: string }).code, 'EAGAIN');
      assert.match(
        err.message,
        new RegExp(
          `could not be asked about lease ${ids[0]} .*policy module lease\\(\\) failed: policy service unreachable`,
        ),
      );
      for (const id of ids) assert.equal(rig.broker.leases.get(id)?.state, 'active', `${id} kept`);
      assert.ok(!rig.audit.some((e) => e.event === 'revoke'));
      assert.equal(rig.broker.configIdentity.policyModule, before, 'the old module decides again');
      const c = await ClientProc.spawn();
      clients.push(c);
      await c.call('connect', { socket: rig.socket }); // the old module allows
    } finally {
      await Promise.all(clients.map((c) => c.exit()));
    }
  });
});

test('a reload whose check of the live leases outlasts policy.recheck_timeout_ms is refused', async () => {
  const file = config(`module = "${allow}"`);
  const slow = module(
    'slow.mjs',
    'export async function lease() { await new Promise((r) => setTimeout(r, 150)); return { allow: true }; }\n',
  );
  await withRig(file, async (rig, admin) => {
    const clients = await Promise.all([ClientProc.spawn(), ClientProc.spawn(), ClientProc.spawn()]);
    try {
      for (const c of clients) await c.call('connect', { socket: rig.socket });
      writeFileSync(
        file,
        `[policy]\nmodule = "${slow}"\nhook_timeout_ms = 1000\nrecheck_timeout_ms = 250\non_reload = "revoke"\n`,
      );
      const err = (await adminRequest(admin, { op: 'reload' }, 10_000).catch((e) => e)) as Error & {
        code?: string;
      };
      assert.equal(err.code, 'ETIMEDOUT');
      assert.match(
        err.message,
        /took longer than policy\.recheck_timeout_ms \(250 ms\), at lease .* \(2 of 3\)/,
      );
      assert.equal(rig.broker.leases.all().filter((l) => l.state === 'active').length, 3);
    } finally {
      await Promise.all(clients.map((c) => c.exit()));
    }
  });
});
