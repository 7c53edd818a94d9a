// A client process pays for what the client library loads before its first
// lease, and for what its first call loads: a short-lived program (a CLI, a
// job that leases a queue once) pays it on every run, and so does each of the
// scale case's client processes (issue 16). Node's own modules the library
// does not need stay unloaded: node:worker_threads (~30 modules), node:fs's
// stream classes (~20, through its ESM import), node:module, node:perf_hooks
// (the global `performance`, ~2 ms of CPU at its first use).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const dist = (p: string): string => new URL(`../../src/${p}`, import.meta.url).href;

const CHILD = `
const before = new Set(process.moduleLoadList);
await import(${JSON.stringify(dist('client/index.js'))});
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

test("loading the client library and its first call's deadline load none of the Node modules a lease does not use", () => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD], {
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
