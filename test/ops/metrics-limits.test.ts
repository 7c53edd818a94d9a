// The metrics endpoint under conditions a scraper does not make: accept errors on the listening socket,
// scrapes that overlap, and peers that open connections and send nothing.
import assert from 'node:assert/strict';
import http from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

after(trackFdLeaks());

type Target = { socketPath: string } | { host: string; port: number; localAddress?: string };

/** One scrape: its status and body, or the error code that ended it (a refused connection: ECONNRESET). */
function scrape(target: Target): Promise<{ status: number | string; body: string }> {
  return new Promise((resolve) => {
    const req = http.request(
      { ...target, path: '/metrics', method: 'GET', agent: false, timeout: 5_000 },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ status: e.code ?? e.message, body: '' }));
    req.end();
  });
}

function value(text: string, name: string): number[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`))
    .map((l) => Number(l.split(' ').at(-1)));
}

/** `n` connections that send nothing, from `from(i)`; resolved once all are connected. */
async function idle(port: number, n: number, from: (i: number) => string): Promise<Socket[]> {
  const socks: Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = connect({ host: '127.0.0.1', port, localAddress: from(i) });
    s.on('error', () => {});
    // Read (nothing ever comes) so the broker's drop is seen as an end and a 'close'.
    s.resume();
    socks.push(s);
    await new Promise((r) => s.once('connect', r));
  }
  return socks;
}

test('accept errors on the listening metrics socket are logged, and the broker goes on serving', async () => {
  // The real server the broker makes, caught as it is made, so errors can be raised on it as libuv would.
  const made: http.Server[] = [];
  const createServer = http.createServer;
  http.createServer = ((...a: Parameters<typeof createServer>) => {
    const s = createServer(...a);
    made.push(s);
    return s;
  }) as typeof createServer;
  syncBuiltinESMExports();
  const logs: string[] = [];
  let rig: Awaited<ReturnType<typeof startRig>>;
  try {
    rig = await startRig({ config: { metrics: { listen: '127.0.0.1:0' } }, log: (m) => logs.push(m) });
  } finally {
    http.createServer = createServer;
    syncBuiltinESMExports();
  }
  try {
    assert.equal(made.length, 1, 'the broker made one HTTP server');
    const e = Object.assign(new Error('accept ENFILE'), { code: 'ENFILE', syscall: 'accept' });
    // The first used to go to the listen's once-listener; the second was uncaught and ended the process.
    for (let i = 0; i < 10; i++) made[0]!.emit('error', e);
    const lines = logs.filter((l) => l.includes('metrics: accept failed on 127.0.0.1:0: accept ENFILE'));
    assert.equal(lines.length, 5, 'logged, rate-limited to its burst');
    const port = Number(rig.broker.metricsEndpoint!.split(':')[1]);
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 200, 'still serving');
  } finally {
    await rig.close();
  }
});

test('overlapping scrapes report the per-lease counters once each', async () => {
  const rig = await startRig({
    sim: { numQueues: 2 },
    config: { metrics: { listen: join('/tmp', `devlease-metrics-lim-${process.pid}.sock`) } },
  });
  const c = await ClientProc.spawn();
  try {
    await c.call('connect', { socket: rig.socket });
    await c.call('queue');
    const { iova: src } = await c.call('alloc', { name: 's', size: 4096 });
    const { iova: dst } = await c.call('alloc', { name: 'd', size: 4096 });
    for (let i = 0; i < 3; i++) await c.call('submit', { desc: { opcode: 'COPY', src, dst, length: 4096 } });
    const target = { socketPath: rig.broker.metricsEndpoint! };
    for (let round = 0; round < 5; round++) {
      // Sent together, they wait on the same device read of the lease's counters.
      const all = await Promise.all([scrape(target), scrape(target), scrape(target)]);
      for (const s of all) {
        assert.equal(s.status, 200);
        assert.deepEqual(value(s.body, 'devlease_lease_completed_total'), [3], `round ${round}`);
        assert.deepEqual(value(s.body, 'devlease_lease_bytes_total'), [3 * 4096], `round ${round}`);
      }
    }
  } finally {
    await c.kill();
    await rig.close();
  }
});

test('connections that send nothing hold the slots only until the header deadline, and 4 a peer', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { metrics: { listen: '127.0.0.1:0' } } });
  const socks: Socket[] = [];
  try {
    const port = Number(rig.broker.metricsEndpoint!.split(':')[1]);
    // One peer's 16 idle connections: only 4 are kept, so a scrape from elsewhere goes through at once.
    socks.push(...(await idle(port, 16, () => '127.0.0.2')));
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 200, 'one peer cannot fill the slots');
    for (const s of socks.splice(0)) s.destroy();
    // 16 peers (loopback addresses 127.0.0.3..18) with one idle connection each fill every slot...
    socks.push(...(await idle(port, 16, (i) => `127.0.0.${i + 3}`)));
    // A connection beyond the slots is accepted and reset at once (not queued, not answered).
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 'ECONNRESET', 'the slots are full');
    // ... until the 5 s header deadline drops them: each closed by the broker well before Node's 30 s sweep.
    const dropped = socks.map((s) => new Promise((r) => (s.closed ? r(undefined) : s.once('close', r))));
    await within(
      Promise.all(dropped),
      'the broker dropping the idle connections at the header deadline',
      20_000,
    );
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 200, 'a slot is free again');
  } finally {
    for (const s of socks) s.destroy();
    await rig.close();
  }
});
