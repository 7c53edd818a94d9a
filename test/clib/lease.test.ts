// libdevlease (clients/c) against a real `devlease sim` and broker: lease, map, a verified
// COPY/FILL/CRC32C/WRITE_IMM workload, use after close, fds back to baseline (in the C process),
// a revocation notice handled within its deadline, SIGKILL of the C client reclaimed, and the C
// example. Programs come from `make -C clients/c` (test/clib/build.ts).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, test } from 'node:test';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { buildClib, runProgram, sanitizerEnv, sanitizerFindings } from './build.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

let bin: string;
before(() => {
  bin = buildClib();
});

let rig: Rig;
beforeEach(async () => {
  rig = await startRig({ sim: { numQueues: 2 } });
});
afterEach(async () => rig.close());

function clean(r: { code: number | null; stdout: string; stderr: string }, what: string): void {
  const failures = r.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
  assert.deepEqual(failures, [], `${what}: steps failed\n${r.stdout}\n${r.stderr}`);
  assert.equal(sanitizerFindings(r.stderr), null, `${what}: sanitizer findings`);
  assert.equal(r.code, 0, `${what} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
}

test('the C client leases, maps, runs a verified workload, refuses use after close, and leaves no fd open', async () => {
  // The workload's one fatal descriptor (outside the window) finds a device slow to show ERROR: its
  // completion is out a second before Q_ERROR, and the client must already treat the queue as stopped.
  await rig.sim.inject({ kind: 'errorLag', ms: 1000 });
  const r = await runProgram('clib-probe', ['workload', rig.socket]);
  clean(r, 'clib-probe workload');
  for (const step of [
    'COPY 64 KiB verified',
    'FILL pattern verified',
    'CRC32C of "123456789" = 0xe3069283',
    'CRC32C of 64 KiB matches software',
    'WRITE_IMM verified',
    '1024 descriptors in batches of 32',
    'COPY into own memfd verified',
    'outside the window: -EIO with WINDOW_VIOLATION',
    'region after close refused',
    'submit after close refused',
    'fds back to baseline',
  ])
    assert.ok(r.stdout.includes(`ok ${step}`), `missing step '${step}'\n${r.stdout}`);
  // The lease info, as the broker wrote it, read by the C client.
  assert.match(
    r.stdout,
    /info lease=queue-\d+ kind=queue state=active queue=\d+ window=0x[0-9a-f]+\+0x[0-9a-f]+/,
  );
  assert.match(r.stdout, /isolation queuePage=enforced \(.+\)/);
  // Closing the session released the lease at the broker.
  await until('the lease to be released', () => rig.broker.leases.all().every((l) => l.state === 'released'));
});

test('a revocation notice reaches the C client with its deadline, and it lets go before it', async () => {
  const child = spawn(join(bin, 'clib-probe'), ['revoke', rig.socket], { env: sanitizerEnv });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  await until('the C client to lease', () => /leased (\S+)/.test(out), 60_000);
  const id = /leased (\S+)/.exec(out)![1]!;
  rig.broker.leases.revoke(id, 20_000); // generous: the machine is shared
  const code = await exited;
  assert.equal(sanitizerFindings(err), null);
  assert.equal(code, 0, `${out}\n${err}`);
  assert.match(out, /revoke notice: \d+ ms to let go, state revoking/);
  assert.match(out, /ok released \d+ ms before the deadline/);
  await until('the reclaim', () => rig.audit.some((e) => e.event === 'reclaim' && e.lease === id));
  const reclaim = rig.audit.find((e) => e.event === 'reclaim' && e.lease === id)!;
  assert.doesNotMatch(reclaim.reason, /deadline/, 'released by the client, not taken at the deadline');
});

test('SIGKILL of the C client: the broker reclaims its lease and the queue is leased again', async () => {
  const child = spawn(join(bin, 'clib-probe'), ['hold', rig.socket], { env: sanitizerEnv });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  await until('the C client to lease', () => /leased (\S+)/.test(out), 60_000);
  assert.ok(out.includes('ok queue, buffer, NOP'), out);
  const id = /leased (\S+)/.exec(out)![1]!;
  const lease = rig.broker.leases.get(id)!;
  assert.equal(lease.ctx.pid, child.pid);
  assert.equal(lease.mappings.size, 3, 'the rings and the buffer are mapped at the device');
  child.kill('SIGKILL');
  await exited;
  await until('the reclaim', () => lease.state === 'released', 20_000);
  assert.ok(rig.audit.some((e) => e.event === 'reclaim' && e.lease === id));
  // Both queues are free again: two more C clients lease them.
  const [a, b] = await Promise.all([
    runProgram('minimal-copy', [rig.socket]),
    runProgram('minimal-copy', [rig.socket]),
  ]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
});

test('device faults and a device reset reach the C client as notices on its ERR eventfd', async () => {
  const child = spawn(join(bin, 'clib-probe'), ['notices', rig.socket], { env: sanitizerEnv });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  // 'close', not 'exit': the exact output below is read only once the pipes are drained.
  const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  await until('the C client to lease', () => /leased \S+ queue \d+/.test(out), 60_000);
  const queue = Number(/leased \S+ queue (\d+)/.exec(out)![1]);
  await rig.sim.inject({ kind: 'fault', queue, code: 3, iova: 0x1234000n });
  await until('the fault notice', () => out.includes('fault WINDOW_VIOLATION'), 30_000);
  assert.match(out, /notice fault\nfault WINDOW_VIOLATION code 3 queue \d+ address 0x1234000/);
  // Past the 16 records the broker keeps: each new fault reported once (counted by faults_total, not the list).
  for (let i = 1; i < 20; i++) {
    await rig.sim.inject({ kind: 'fault', queue, code: 3, iova: 0x1234000n + BigInt(i) * 0x1000n });
    const address = `address 0x${(0x1234000 + i * 0x1000).toString(16)}\n`;
    await until(`fault ${i + 1}'s notice`, () => out.includes(address), 30_000);
  }
  const reported = [...out.matchAll(/^fault WINDOW_VIOLATION code 3 queue \d+ address (0x[0-9a-f]+)$/gm)].map(
    (m) => m[1],
  );
  assert.deepEqual(
    reported,
    Array.from({ length: 20 }, (_, i) => `0x${(0x1234000 + i * 0x1000).toString(16)}`),
    'each fault reported once, in order',
  );
  // What the hang alone brings: the 20 fault notices above must not stand in for its reset notice.
  const beforeHang = out.length;
  await rig.sim.inject({ kind: 'hang' }); // the broker recovers the device: every lease ends
  const code = await exited;
  assert.equal(sanitizerFindings(err), null);
  assert.equal(code, 0, `${out}\n${err}`);
  assert.equal(
    out.slice(beforeHang),
    'notice reset\nnotice disconnected\n',
    `after the hang:\n${out}\n${err}`,
  );
});

test('the lease request rides in VERSION: device memory granted and mapped, a bad request refused naming the field', async () => {
  const ok = await runProgram('clib-probe', ['request', rig.socket, '{"devmemGranules":1}']);
  clean(ok, 'clib-probe request');
  assert.match(ok.stdout, /leased queue-\d+ devmem yes 0x0\+0x100000/);
  assert.match(ok.stdout, /region 10 size 0x100000 mapped/);
  assert.match(ok.stdout, /ok region 10: a store through the mapping reads back through the broker/);
  // 16 granules: 21 setup requests (4 interrupts, the queue page and 16 granules), more than one batch carries
  // (DL_MAX_BATCH): sent in two (refused EPROTO when one batch was all there was).
  const many = await runProgram('clib-probe', ['request', rig.socket, '{"devmemGranules":16}']);
  clean(many, 'clib-probe request (16 granules)');
  assert.match(many.stdout, /leased queue-\d+ devmem yes 0x0\+0x1000000/);
  const bad = await runProgram('clib-probe', ['request', rig.socket, '{"devmemGranules":-1}']);
  clean(bad, 'clib-probe request (refused)');
  assert.match(
    bad.stdout,
    /error EINVAL: lease refused: .*devlease\.request\.devmemGranules must be an integer/,
  );
  const notJson = await runProgram('clib-probe', ['request', rig.socket, '[1, 2']);
  clean(notJson, 'clib-probe request (not JSON)');
  assert.match(notJson.stdout, /error EINVAL: request_json is not a JSON object/);
});

test('examples/c/minimal-copy.c copies a page through a leased queue', async () => {
  const r = await runProgram('minimal-copy', [rig.socket]);
  assert.equal(sanitizerFindings(r.stderr), null);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^lease queue-\d+ on queue \d+: copied true\n$/);
});

test('a refused lease is an error naming why, not a crash', async () => {
  const r = await runProgram('clib-probe', ['connect', join(rig.dir, 'nobody.sock')]);
  clean(r, 'clib-probe connect');
  assert.match(r.stdout, /error ENOENT: no broker is listening on .*nobody\.sock/);
});
