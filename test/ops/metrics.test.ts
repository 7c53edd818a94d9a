// Prometheus metrics, scraped as Prometheus would: an HTTP GET of /metrics on the configured endpoint,
// the text checked by Prometheus's own `promtool check metrics`, and the counters followed while leases are
// granted, used, denied, revoked, reclaimed, and the device hangs and recovers.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, unlinkSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { configFromObject } from '../../src/broker/config.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

after(trackFdLeaks());

/** promtool: on PATH, or where scripts/ops-deps.sh extracts it. */
function promtool(): string {
  const onPath = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
  if (onPath.status === 0) return onPath.stdout.trim();
  const cached = join(
    process.env.DEVLEASE_CACHE ?? join(homedir(), '.cache', 'devlease'),
    'prometheus/usr/bin/promtool',
  );
  if (existsSync(cached)) return cached;
  return assert.fail(
    "promtool is missing: run scripts/ops-deps.sh (it extracts it from Debian's prometheus package)",
  );
}

type Target = { socketPath: string } | { host: string; port: number };

function get(target: Target, path = '/metrics'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, path, method: 'GET', timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }),
      );
    });
    req.on('timeout', () => req.destroy(new Error('scrape timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** Samples of one metric name whose labels include `labels`: their values summed (0 when none). */
function value(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[4]);
  }
  return sum;
}

function check(text: string): void {
  const r = spawnSync(promtool(), ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool check metrics failed:\n${r.stdout}${r.stderr}`);
  assert.equal(
    `${r.stdout}${r.stderr}`.trim(),
    '',
    `promtool check metrics complained:\n${r.stdout}${r.stderr}`,
  );
}

test('metrics over a unix socket: promtool accepts a scrape with leases active, and the counters move', async () => {
  const rig2 = await startRig({
    sim: { numQueues: 4 },
    config: {
      sa1: { heartbeat_ms: 50 },
      metrics: { listen: join('/tmp', `devlease-metrics-${process.pid}.sock`) },
    },
  });
  const target = { socketPath: rig2.broker.metricsEndpoint! };
  const clients: ClientProc[] = [];
  try {
    let m = (await get(target)).body;
    assert.equal(value(m, 'devlease_grants_total'), 0);
    assert.equal(value(m, 'devlease_leases', { kind: 'queue', state: 'active' }), 0);

    // Two clients lease; A moves 3 × 4 KiB through its queue.
    const [a, b] = [await ClientProc.spawn(), await ClientProc.spawn()];
    clients.push(a, b);
    const infoA = (await a.call('connect', { socket: rig2.socket })).info;
    await b.call('connect', { socket: rig2.socket });
    await a.call('queue');
    const { iova: src } = await a.call('alloc', { name: 's', size: 4096 });
    const { iova: dst } = await a.call('alloc', { name: 'd', size: 4096 });
    for (let i = 0; i < 3; i++) {
      const r = await a.call('submit', { desc: { opcode: 'COPY', src, dst, length: 4096 } });
      assert.equal(r.status, 'OK');
    }
    const scrape = await get(target);
    assert.equal(scrape.status, 200);
    assert.match(scrape.type, /^text\/plain; version=0\.0\.4/);
    m = scrape.body;
    check(m); // while two leases are active
    assert.equal(value(m, 'devlease_grants_total', { kind: 'queue' }), 2);
    assert.equal(value(m, 'devlease_leases', { kind: 'queue', state: 'active' }), 2);
    assert.equal(value(m, 'devlease_grant_duration_seconds_count'), 2);
    const aLease = { lease: infoA.lease, pid: String(a.pid) };
    // Queue work: 3 COPYs (Q_COMPLETED; Sa1Queue.create's own setup submits none) and their bytes.
    assert.equal(value(m, 'devlease_lease_completed_total', aLease), 3);
    assert.equal(value(m, 'devlease_lease_bytes_total', aLease), 3 * 4096);
    assert.ok(value(m, 'devlease_device_command_duration_seconds_count', { command: 'region_read' }) > 0);
    assert.ok(value(m, 'devlease_device_command_duration_seconds_count', { command: 'dma_map' }) >= 2);
    assert.equal(value(m, 'devlease_device_up'), 1);
    assert.equal(value(m, 'devlease_audit_write_errors_total'), 0, 'no audit record refused');
    assert.ok(value(m, 'devlease_device_heartbeat_age_seconds') < 5);

    // Denied while draining (reason class 'draining').
    rig2.broker.leases.draining = true;
    const c = await ClientProc.spawn();
    clients.push(c);
    await assert.rejects(c.call('connect', { socket: rig2.socket }));
    rig2.broker.leases.draining = false;
    // The owner revokes A with no deadline; B's process dies.
    rig2.broker.leases.revoke(infoA.lease, 0);
    await b.kill();
    await until('both leases to be released', () => rig2.broker.leases.all().length === 0, 20_000);
    m = (await get(target)).body;
    check(m);
    assert.equal(value(m, 'devlease_denials_total', { kind: 'queue', reason: 'draining' }), 1);
    assert.equal(value(m, 'devlease_revocations_total'), 1);
    assert.equal(value(m, 'devlease_reclaims_total', { cause: 'revoke' }), 1);
    assert.equal(value(m, 'devlease_reclaims_total', { cause: 'client' }), 1);
    assert.equal(value(m, 'devlease_reclaim_duration_seconds_count'), 2);
    assert.equal(value(m, 'devlease_leases', { kind: 'queue', state: 'active' }), 0);
    assert.equal(value(m, 'devlease_lease_completed_total'), 0, 'released leases have no series');

    // A fault record on a queue, then a hang: counted, and the device recovers.
    const d = await ClientProc.spawn();
    clients.push(d);
    const infoD = (await d.call('connect', { socket: rig2.socket })).info;
    await rig2.sim.inject({ kind: 'fault', queue: infoD.queue, code: 4, iova: 0x1234000n });
    await until(
      'the fault to be counted',
      async () =>
        value((await get(target)).body, 'devlease_device_faults_total', {
          code: '4',
          name: 'IOMMU_FAULT',
        }) === 1,
    );
    // 18 more with the fault vector (4: NUM_QUEUES) silent for the first 17: the log kept 16, 2 were lost.
    await rig2.sim.inject({ kind: 'dropIrq', count: 17, vector: 4 });
    for (let i = 0; i < 18; i++) await rig2.sim.inject({ kind: 'fault', queue: infoD.queue, code: 4 });
    await until(
      'the lost records to be counted',
      async () => value((await get(target)).body, 'devlease_device_faults_lost_total') === 2,
    );
    const recovered = new Promise<void>((resolve) => rig2.broker.once('recovered', resolve));
    await rig2.sim.inject({ kind: 'hang' });
    await within(recovered, 'the recovery from the hang', 60_000);
    m = (await get(target)).body;
    check(m);
    assert.equal(value(m, 'devlease_device_hangs_total'), 1);
    assert.equal(value(m, 'devlease_device_recoveries_total'), 1);
    assert.equal(value(m, 'devlease_reclaims_total', { cause: 'recovery' }), 1);
    // An error the kernel reports of a device (AER: a kernel device's 'error-reported', test/kernel/guest/aer.test.ts),
    // with a lease held: counted, and its reclaim counted as a recovery's.
    const e = await ClientProc.spawn();
    clients.push(e);
    await e.call('connect', { socket: rig2.socket });
    const again = new Promise<void>((resolve) => rig2.broker.once('recovered', resolve));
    rig2.broker.device.emit('error-reported', 'an AER error');
    await within(again, 'the recovery from the reported error', 60_000);
    m = (await get(target)).body;
    assert.equal(value(m, 'devlease_device_errors_total'), 1);
    assert.equal(value(m, 'devlease_device_recoveries_total'), 2);
    assert.equal(value(m, 'devlease_reclaims_total', { cause: 'recovery' }), 2);

    assert.equal((await get(target, '/other')).status, 404);
  } finally {
    await Promise.all(clients.map((x) => x.kill()));
    await rig2.close();
  }
  assert.ok(!existsSync(target.socketPath), 'the metrics socket is removed at close');
});

// The path is only removed while it is still this broker's socket: it used to be removed whatever was there.
test('a metrics socket path bound anew by another server is left to it when the broker closes', async () => {
  const path = join('/tmp', `devlease-metrics-rebound-${process.pid}.sock`);
  const rig = await startRig({ sim: { numQueues: 2 }, config: { metrics: { listen: path } } });
  const other = createServer();
  let kept: boolean;
  try {
    try {
      unlinkSync(path);
      await new Promise<void>((resolve) => other.listen(path, resolve));
    } finally {
      await rig.close();
    }
    kept = existsSync(path);
  } finally {
    await new Promise((r) => other.close(r));
  }
  assert.ok(kept, "the other server's socket is still there");
});

test('metrics on HOST:PORT, and [metrics] listen validated', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { metrics: { listen: '127.0.0.1:0' } } });
  try {
    const ep = rig.broker.metricsEndpoint!;
    assert.match(ep, /^127\.0\.0\.1:\d+$/);
    const port = Number(ep.split(':')[1]);
    const r = await get({ host: '127.0.0.1', port });
    assert.equal(r.status, 200);
    check(r.body);
  } finally {
    await rig.close();
  }
  assert.throws(
    () => configFromObject({ metrics: { listen: 'localhost' } }),
    /metrics\.listen: must be an absolute unix socket path or HOST:PORT/,
  );
  assert.equal(configFromObject({}).metrics.listen, null, 'off by default');
});
