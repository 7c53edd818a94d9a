// A client process pays for what the client library loads before its first
// lease, and for what its first call loads: a short-lived program (a CLI, a
// job that leases a queue once) pays it on every run, and so does each of the
// scale case's client processes (issue 16). Node's own modules the library
// does not need stay unloaded: node:worker_threads (~30 modules), node:fs's
// stream classes (~20, through its ESM import), node:module, node:perf_hooks
// (the global `performance`, ~2 ms of CPU at its first use).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { after, test } from 'node:test';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const dist = (p: string): string => new URL(`../../src/${p}`, import.meta.url).href;

/** The package's root, where `import 'devlease/client'` resolves to the package itself (its exports). */
const ROOT = new URL('../../../', import.meta.url);

const CHILD = `
const before = new Set(process.moduleLoadList);
// The client's entry point, as a program that depends on devlease imports it (package.json exports).
await import('devlease/client');
const { StreamSocket } = await import(${JSON.stringify(dist('sys/stream-socket.js'))});
const { VfioUserClient } = await import(${JSON.stringify(dist('vfio/user/client.js'))});
const { VFIO_USER_FRAMING } = await import(${JSON.stringify(dist('vfio/user/transport.js'))});
// A first call that runs its deadline out: VERSION to a peer that never answers.
const [ours, silent] = StreamSocket.pair({ framing: VFIO_USER_FRAMING });
let code = null;
try {
  await VfioUserClient.fromSocket(ours, { timeoutMs: 30 });
} catch (err) {
  code = err.code;
}
silent.close();
const loaded = process.moduleLoadList.filter((m) => !before.has(m) && m.startsWith('NativeModule '));
process.stdout.write(JSON.stringify({ code, loaded: loaded.map((m) => m.slice('NativeModule '.length)) }));
`;

test("loading the client library ('devlease/client') and its first call's deadline load none of the Node modules a lease does not use", () => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const { code, loaded } = JSON.parse(r.stdout) as { code: string | null; loaded: string[] };
  assert.equal(code, 'ETIMEDOUT', 'the call ran out its deadline');
  const unwanted = loaded.filter((m) =>
    /^(worker_threads|module|perf_hooks|stream|internal\/fs\/streams|internal\/perf\/performance)$/.test(m),
  );
  assert.deepEqual(unwanted, [], `loaded: ${loaded.join(', ')}`);
});

const QUEUE_CHILD = `
const { connect } = await import(${JSON.stringify(dist('client/index.js'))});
const { Sa1Queue } = await import(${JSON.stringify(dist('client/sa1-queue.js'))});
const lease = await connect({ socket: process.argv[1] });
const before = new Set(process.moduleLoadList);
// A queue's waits: the promise's pump (spin, deadline) and a polling caller's spin.
const q = await Sa1Queue.create(lease, { entries: 4 });
const ok = (await q.nop()).status === 'OK';
q.post({ opcode: 'NOP' });
const spun = q.spinUntil(() => q.inFlight === 0);
await q.close();
lease.close();
const loaded = process.moduleLoadList.filter((m) => !before.has(m) && m.startsWith('NativeModule '));
process.stdout.write(JSON.stringify({ ok, spun, loaded: loaded.map((m) => m.slice('NativeModule '.length)) }));
`;

test("a queue's waits load no Node module: the spin and the deadlines read a clock that needs none", async () => {
  const rig = await startRig();
  try {
    const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', QUEUE_CHILD, rig.socket]);
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b) => (stdout += b));
      child.stderr.on('data', (b) => (stderr += b));
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000); // bounded: a hung child fails the test
      child.on('close', (status) => {
        clearTimeout(timer);
        resolve({ status, stdout, stderr });
      });
    });
    assert.equal(r.status, 0, r.stderr);
    const { ok, spun, loaded } = JSON.parse(r.stdout) as { ok: boolean; spun: boolean; loaded: string[] };
    assert.ok(ok && spun, 'both NOPs completed');
    assert.deepEqual(loaded, [], `loaded: ${loaded.join(', ')}`);
  } finally {
    await rig.close();
  }
});

test("the client library loads from CommonJS too: require('devlease/client') (no top-level await in its graph)", () => {
  const r = spawnSync(
    process.execPath,
    [
      '-e',
      "const c = require('devlease/client'); process.stdout.write(typeof c.connect + ' ' + typeof c.Sa1Queue)",
    ],
    { cwd: ROOT, encoding: 'utf8', timeout: 30_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'function function');
});
