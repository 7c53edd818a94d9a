// devlease_device_heartbeat_age_seconds (and `devlease top`'s heartbeat) when the device does not answer the
// read, and when there is no heartbeat to read: what an alert on the age sees. Real scrapes over HTTP; the
// SA-1 simulator child stopped with SIGSTOP is a device that answers nothing.
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { adminRequest } from '../../src/cli/admin.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { withGenericBroker } from '../helpers/generic-broker.js';

after(trackFdLeaks());

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: '127.0.0.1', port, path: '/metrics', agent: false, timeout: 30_000 },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(body) : reject(new Error(`${res.statusCode}: ${body}`)),
        );
      },
    );
    req.on('timeout', () => req.destroy(new Error('scrape timed out')));
    req.on('error', reject);
  });
}

/** The samples of the unlabelled gauge `name` (besides the default device label). */
function samples(text: string, name: string): number[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .map((l) => Number(l.split(' ').at(-1)));
}

const AGE = 'devlease_device_heartbeat_age_seconds';

test('a device that stops answering: the heartbeat age goes on from the last change seen, never back to 0', async () => {
  // A heartbeat far slower than the test: it is not seen to change between the two samples whatever the load.
  const rig = await startRig({
    deviceTimeoutMs: 300,
    config: { sa1: { heartbeat_ms: 60_000 }, metrics: { listen: '127.0.0.1:0' } },
  });
  let stopped = false;
  try {
    const port = Number(rig.broker.metricsEndpoint!.split(':')[1]);
    const first = samples(await scrape(port), AGE);
    assert.equal(first.length, 1, 'one sample while the device answers');
    const adminSock = join(rig.broker.dir, 'admin.sock');
    await adminRequest(adminSock, { op: 'top' }); // the top view's own first sample
    rig.sim.process.kill('SIGSTOP'); // its ChildProcess: never a pid another process may have by now
    stopped = true;
    // Each read now fails at its deadline (300 ms), so at least that long has passed since the first samples.
    const age = samples(await scrape(port), AGE);
    assert.equal(age.length, 1, 'the age is still reported');
    assert.ok(age[0]! > 0, `the age of a heartbeat not seen since the last scrape is not 0: ${age[0]}`);
    const snap = (await adminRequest(adminSock, { op: 'top' }, 30_000)) as {
      heartbeatAgeSeconds: number | null;
    };
    assert.ok(
      snap.heartbeatAgeSeconds !== null && snap.heartbeatAgeSeconds > 0,
      `devlease top shows the age too: ${snap.heartbeatAgeSeconds}`,
    );
  } finally {
    if (stopped) rig.sim.process.kill('SIGCONT');
    await rig.close();
  }
});

test('a device without a heartbeat register reports no age (not 0)', async () => {
  await withGenericBroker({ config: { metrics: { listen: '127.0.0.1:0' } } }, async (broker) => {
    const port = Number(broker.metricsEndpoint!.split(':')[1]);
    const text = await scrape(port);
    assert.match(text, /^devlease_device_up\{/m, 'a scrape of the broker');
    assert.deepEqual(samples(text, AGE), [], 'no heartbeat, so no age');
  });
});
