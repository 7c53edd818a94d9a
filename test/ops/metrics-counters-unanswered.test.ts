// The per-lease device counters (devlease_lease_completed_total, devlease_lease_bytes_total, `devlease top`'s
// rates) when the device stops answering. They were read one lease after another, each read waiting out the
// device's request timeout, so a scrape took leases × that timeout and the scraper (or top's 5 s wait) gave
// up: nothing at all was answered just when the device was in trouble. Now the reads go out together under one
// deadline, and the answer has what arrived and names what did not. The SA-1 simulator child stopped with
// SIGSTOP is a device that answers nothing; its request timeout here is far longer than any wait below.
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { renderTop, type TopSnap } from '../../src/cli/top-view.js';
import { PidFd } from '../../src/sys/pidfd.js';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

/** One scrape; rejects if it is not answered within `ms` (the scraper giving up). */
function scrape(port: number, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false, timeout: ms }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`${res.statusCode}: ${body}`)),
      );
    });
    req.on('timeout', () => req.destroy(new Error(`the scrape was not answered in ${ms} ms`)));
    req.on('error', reject);
  });
}

const lines = (text: string, name: string) =>
  text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));

test('device stopped: a scrape and a top refresh answer with the counters unavailable, naming why', async () => {
  const LEASES = 4;
  const rig = await startRig({
    deviceTimeoutMs: 120_000, // one read's timeout: 4 leases read one after another would take 8 minutes
    config: {
      sa1: { heartbeat_ms: 60_000, response_timeout_ms: 600_000 },
      metrics: { listen: '127.0.0.1:0' },
    },
  });
  const sim = PidFd.open(rig.sim.pid);
  const clients: ClientProc[] = [];
  let stopped = false;
  try {
    const port = Number(rig.broker.metricsEndpoint!.split(':')[1]);
    for (let i = 0; i < LEASES; i++) {
      const c = await ClientProc.spawn();
      clients.push(c);
      await c.call('connect', { socket: rig.socket });
    }
    const before = await scrape(port, 30_000);
    assert.equal(lines(before, 'devlease_lease_completed_total').length, LEASES, before);
    assert.deepEqual(lines(before, 'devlease_lease_counters_unavailable'), [
      'devlease_lease_counters_unavailable{device="sa1"} 0',
    ]);

    sim.sendSignal('SIGSTOP');
    stopped = true;
    // Well inside a scraper's usual 10 s and far under one device request timeout: answered at the deadline.
    const during = await scrape(port, 30_000);
    assert.deepEqual(lines(during, 'devlease_lease_completed_total'), [], 'no counter made up');
    assert.deepEqual(lines(during, 'devlease_lease_bytes_total'), []);
    assert.deepEqual(lines(during, 'devlease_lease_counters_unavailable'), [
      `devlease_lease_counters_unavailable{code="ETIMEDOUT",device="sa1"} ${LEASES}`,
    ]);
    assert.equal(lines(during, 'devlease_leases').length > 0, true, 'the rest of the scrape is there');

    const admin = join(rig.broker.dir, 'admin.sock');
    const snap = (await adminRequest(admin, { op: 'top' }, 30_000)) as TopSnap;
    assert.equal(snap.leases.length, LEASES);
    assert.ok(
      snap.leases.every((l) => l.completed === null && l.bytes === null),
      JSON.stringify(snap.leases),
    );
    assert.equal(snap.countersUnavailable?.code, 'ETIMEDOUT');
    assert.equal(snap.countersUnavailable?.leases.length, LEASES);
    assert.match(
      snap.countersUnavailable!.error,
      /did not answer the counter reads within the scrape's \d+ ms/,
    );
    const screen = renderTop(null, snap, 'lease').join('\n');
    assert.match(
      screen,
      new RegExp(`counters unavailable for ${LEASES} lease\\(s\\): the device did not answer`),
    );

    sim.sendSignal('SIGCONT');
    stopped = false;
  } finally {
    if (stopped) sim.sendSignal('SIGCONT');
    sim.close();
    for (const c of clients) await c.exit();
    await rig.close();
  }
});
