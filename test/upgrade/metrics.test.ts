// The metrics endpoint through an upgrade. The new broker serves the listening socket the old one hands over:
// it used to bind `[metrics] listen` again while the old broker still listened there, which for HOST:PORT
// failed (EADDRINUSE) on every upgrade, and for a socket path unlinked the old broker's live socket.
// And a new broker that cannot start (here: its config names a port someone else holds) touches nothing of
// the old broker's: it used to close() what it had rebuilt, which waited for good on the held lease table (the
// old broker frozen until its deadline) and would have reclaimed the old broker's live leases.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { UpgradeRig } from './rig.js';

after(trackFdLeaks());

/**
 * GET /metrics at `endpoint` (HOST:PORT or a socket path): the status and body. A connection per scrape: one
 * kept alive to a broker that handed over ends with it (Prometheus's client retries a GET on such a reused
 * connection; Node's agent does not).
 */
function scrape(endpoint: string): Promise<{ status: number; body: string }> {
  const where = endpoint.startsWith('/')
    ? { socketPath: endpoint }
    : { host: endpoint.slice(0, endpoint.lastIndexOf(':')), port: Number(endpoint.split(':').pop()) };
  return new Promise((resolve, reject) => {
    const req = get({ ...where, path: '/metrics', timeout: 10_000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${endpoint}`)));
    req.on('error', reject);
  });
}

/** A TCP port on 127.0.0.1 that is listening (held by this process until closed). */
async function heldPort(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as { port: number }).port, server };
}

for (const kind of ['HOST:PORT', 'a socket path'] as const) {
  test(`an upgrade with the metrics endpoint on ${kind}: the new broker serves it, twice over`, {
    timeout: 180_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'devlease-metrics-'));
    // Port 0: the kernel picks a free port as the first broker binds (a port found free beforehand, then
    // closed, could be taken by anyone before the broker bound it); its 'ready' line says which.
    const listen = kind === 'HOST:PORT' ? '127.0.0.1:0' : join(dir, 'metrics.sock');
    const rig = await UpgradeRig.start({}, { config: `[metrics]\nlisten = "${listen}"\n` });
    const endpoint = rig.metricsEndpoint();
    try {
      await rig.addClient();
      assert.equal((await scrape(endpoint)).status, 200, 'the first broker serves metrics');
      for (let i = 1; i <= 2; i++) {
        const old = await rig.brokerPid();
        const up = (await rig.request({ op: 'upgrade' })) as { pid: number };
        assert.notEqual(up.pid, old, `upgrade ${i}: a new broker serves`);
        const got = await scrape(endpoint);
        assert.equal(got.status, 200, `upgrade ${i}: metrics still served`);
        assert.match(got.body, /^devlease_/m);
        await rig.progress(5);
      }
      const stats = await rig.stopClients();
      assert.deepEqual(stats[0]!.errors, []);
    } finally {
      await rig.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('a new broker that cannot start its metrics endpoint refuses the state at once and touches nothing of the old broker', {
  timeout: 180_000,
}, async () => {
  const held = await heldPort();
  const rig = await UpgradeRig.start({}, { config: '' });
  try {
    await rig.addClient();
    await rig.addClient();
    const pid = await rig.brokerPid();
    await rig.progress(10);
    // The next broker reads this config: an endpoint it cannot bind, found after it rebuilt everything.
    writeFileSync(rig.configFile!, `[metrics]\nlisten = "127.0.0.1:${held.port}"\n`);
    await assert.rejects(
      rig.request({ op: 'upgrade', deadlineMs: 60_000 }, 120_000),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EAGAIN');
        assert.match(
          err.message,
          /upgrade rolled back: .*refused the state: metrics: cannot listen on 127\.0\.0\.1:\d+/,
        );
        return true;
      },
    );
    const status = await rig.request({ op: 'status' });
    assert.equal(status.pid, pid, 'the old broker carries on');
    const audit = (await rig.request({ op: 'audit' })) as { event: string }[];
    assert.ok(
      !audit.some((r) => ['reclaim', 'released', 'quarantined'].includes(r.event)),
      'no lease was ended',
    );
    await rig.progress(10);
    const leases = (await rig.request({ op: 'leases' })) as { state: string }[];
    assert.deepEqual(
      leases.map((l) => l.state),
      ['active', 'active'],
    );
    await rig.addClient(); // the sockets are still there: a new client leases
    await rig.stopClientsUnharmed();
  } finally {
    await rig.close();
    await new Promise((r) => held.server.close(r));
  }
});

// A scrape reads the device (heartbeat, queue states). While an upgrade holds the broker the device connection
// is the new broker's to read, so a scrape then got its device reads' replies taken by the new broker (a
// protocol error there) or its msg_ids colliding with the new broker's. Now the held broker answers 503.
test('while an upgrade holds the broker, a scrape is answered 503 without reading the device; after the rollback, 200', {
  timeout: 180_000,
}, async () => {
  const rig = await UpgradeRig.start(
    { DEVLEASE_TEST_UPGRADE_MISBEHAVE: 'hang' },
    { config: `[metrics]\nlisten = "127.0.0.1:0"\n` },
  );
  const endpoint = rig.metricsEndpoint();
  try {
    await rig.addClient();
    // Under the clients' 5 s call timeout: their requests wait out the hold.
    const upgrading = rig.request({ op: 'upgrade', deadlineMs: 4000 }, 60_000).catch((e: Error) => e);
    let held = false;
    const until503 = Date.now() + 30_000;
    while (!held && Date.now() < until503) {
      held = (await scrape(endpoint)).status === 503;
      if (!held) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(held, 'a scrape during the hold was answered 503');
    assert.match(String((await upgrading) as Error), /upgrade rolled back/);
    const after = await scrape(endpoint);
    assert.equal(after.status, 200);
    await rig.progress(5);
    assert.deepEqual((await rig.stopClients())[0]!.errors, []);
  } finally {
    await rig.close();
  }
});
