// The admin socket and CLI against a running daemon: status, leases, clients, revoke, drain.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type ChildSimulator, spawnSimulator } from '../../src/sim/host/child.js';
import { DEVLEASE_BIN, startBroker } from '../../src/util/processes.js';
import { ClientProc, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let dir: string;
let sim: ChildSimulator;
let broker: Awaited<ReturnType<typeof startBroker>>;
let admin: string;
const audit: Record<string, unknown>[] = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'devlease-admin-'));
  sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 4 });
  broker = await startBroker(`vfio-user:${sim.socketPath}`, ['--rundir', join(dir, 'run')], (ev) =>
    audit.push(ev),
  );
  admin = join(broker.dir, 'admin.sock');
});
after(async () => {
  await broker?.stop();
  await sim?.close();
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

const cli = (...args: string[]) => {
  const r = spawnSync(process.execPath, [DEVLEASE_BIN, ...args, '--admin', admin], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr, json: () => JSON.parse(r.stdout) };
};

test('status names the device, the transport and the driver state', () => {
  const r = cli('status', '--json');
  assert.equal(r.code, 0, r.err);
  const s = r.json();
  assert.equal(s.transport, 'vfio-user');
  assert.equal(s.driver.driver, 'sa1');
  assert.ok(s.driver.status.includes('FW_RUNNING'));
  assert.equal(s.driver.freeQueues, 4);
});

test('leases and clients list a live lease; revoke with a deadline takes it back', async () => {
  const c = await ClientProc.spawn();
  const info = (await c.call('connect', { socket: broker.sockets.queue })).info;
  await c.call('alloc', { name: 'x', size: 8192 });
  const leases = cli('leases', '--json').json();
  assert.equal(leases.length, 1);
  assert.equal(leases[0].id, info.lease);
  assert.equal(leases[0].pid, c.pid);
  assert.equal(leases[0].mappings, 1);
  assert.equal(leases[0].mappedBytes, '8192');
  const human = cli('leases');
  assert.match(human.out, new RegExp(`${info.lease}\\s+active\\s+${c.pid}`));
  const clients = cli('clients', '--json').json();
  assert.deepEqual(clients[0].leases, [info.lease]);
  const r = cli('revoke', info.lease, '--deadline', '100', '--json');
  assert.equal(r.code, 0, r.err);
  assert.equal(r.json().state, 'revoking');
  await until('the lease to be gone', () => cli('leases', '--json').json().length === 0);
  await until(
    'the revoke audit record',
    () => audit.some((e) => e.event === 'revoke' && e.lease === info.lease),
    2000,
  ).catch(() => {
    throw new Error(`no revoke record in ${JSON.stringify(audit.map((e) => e.event))}`);
  });
  await c.exit();
});

test('drain refuses new leases until undrained; bad arguments are named', async () => {
  assert.equal(cli('drain', '--json').json().draining, true);
  const c = await ClientProc.spawn();
  const err = await c.call('connect', { socket: broker.sockets.queue }).catch((e) => e);
  assert.equal(err.code, 'EBUSY');
  assert.match(err.message, /draining/);
  assert.equal(cli('drain', '--off', '--json').json().draining, false);
  await c.call('connect', { socket: broker.sockets.queue });
  await c.exit();
  const bad = cli('revoke', 'queue-1', '--deadline', 'soon');
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--deadline must be a non-negative integer/);
  const missing = cli('revoke', 'no-such-lease');
  assert.equal(missing.code, 1);
  assert.match(missing.err, /no lease 'no-such-lease'/);
});
