// The metrics endpoint under conditions a scraper does not make: accept errors on the listening socket,
// scrapes that overlap, peers that open connections and send nothing, and peers that keep a connection
// alive after their response with blank lines.
import assert from 'node:assert/strict';
import http from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { describeLeak, openFds, trackFdLeaks } from '../helpers/fds.js';
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

/** `n` connections that send nothing, from `from(i)` to `host`; resolved once all are connected. */
async function idle(
  port: number,
  n: number,
  from: (i: number) => string,
  host = '127.0.0.1',
): Promise<Socket[]> {
  const socks: Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = connect({ host, port, localAddress: from(i) });
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

// On a dual-stack listener ([::]) an IPv4 peer is ::ffff:a.b.c.d: counted as its IPv4 address, not by its /64
// (::ffff:0:0/64, which every IPv4 peer shares). An IPv6 peer is its /64 (::1's here).
test('on a dual-stack endpoint, IPv4 peers are counted each by its address and an IPv6 peer by its /64', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { metrics: { listen: '[::]:0' } } });
  const socks: Socket[] = [];
  try {
    const endpoint = rig.broker.metricsEndpoint!;
    const port = Number(endpoint.slice(endpoint.lastIndexOf(':') + 1));
    socks.push(...(await idle(port, 4, () => '127.0.0.2')));
    assert.equal(
      (await scrape({ host: '127.0.0.1', port, localAddress: '127.0.0.3' })).status,
      200,
      'another IPv4 peer has slots of its own',
    );
    assert.equal(
      (await scrape({ host: '127.0.0.1', port, localAddress: '127.0.0.2' })).status,
      'ECONNRESET',
      "the first peer's 4 are held",
    );
    socks.push(...(await idle(port, 4, () => '::1', '::1')));
    assert.equal(
      (await scrape({ host: '::1', port, localAddress: '::1' })).status,
      'ECONNRESET',
      '::1/64 has 4',
    );
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 200, 'IPv4 peers are not in ::1/64');
  } finally {
    for (const s of socks) s.destroy();
    await rig.close();
  }
});

/**
 * A connection from `from` that has sent one `GET /metrics` and read its whole response (kept alive: HTTP/1.1),
 * then sends a blank line every 500 ms until it is closed. Resolved once the response is in.
 */
async function trickler(port: number, from: string): Promise<{ sock: Socket; closed: Promise<void> }> {
  const sock = connect({ host: '127.0.0.1', port, localAddress: from });
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  await within(new Promise((r) => sock.once('connect', r)), `a connection from ${from}`);
  let got = '';
  sock.setEncoding('latin1');
  const response = new Promise<void>((resolve) => {
    const onData = (c: string) => {
      got += c;
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = /\r\ncontent-length: (\d+)\r\n/i.exec(got.slice(0, end + 2));
      const whole = length ? got.length >= end + 4 + Number(length[1]) : got.endsWith('\r\n0\r\n\r\n');
      if (!whole) return;
      sock.off('data', onData);
      resolve();
    };
    sock.on('data', onData);
  });
  sock.write('GET /metrics HTTP/1.1\r\nhost: devlease\r\n\r\n');
  await within(response, `the response on the connection from ${from}`);
  assert.match(got, /^HTTP\/1\.1 200 OK\r\n/);
  sock.resume(); // whatever else comes (nothing: the broker only closes)
  // A blank line starts no request (the HTTP parser skips it), so no request deadline applies; each one is a
  // read, which restarts the socket's inactivity timer (Node's keepAliveTimeout).
  const trickle = setInterval(() => sock.write('\r\n'), 500);
  closed.then(() => clearInterval(trickle));
  return { sock, closed };
}

test('connections kept alive after a response with blank lines are closed at the idle deadline, freeing the slots', async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { metrics: { listen: '127.0.0.1:0' } } });
  const before = openFds();
  const peers: { sock: Socket; closed: Promise<void> }[] = [];
  try {
    const port = Number(rig.broker.metricsEndpoint!.split(':')[1]);
    // 4 peers (127.0.0.2..5) with 4 connections each, within the per-peer limit: all 16 slots.
    for (let a = 2; a <= 5; a++) for (let i = 0; i < 4; i++) peers.push(await trickler(port, `127.0.0.${a}`));
    // Each is closed once it has been idle (no request) for 5 s, blank lines or not. They used to stay open
    // for as long as their peer went on, and every scrape was refused.
    await within(
      Promise.all(peers.map((p) => p.closed)),
      'the broker to close connections that send blank lines after their response',
      30_000,
    );
    assert.equal((await scrape({ host: '127.0.0.1', port })).status, 200, 'the slots are free again');
  } finally {
    for (const p of peers) p.sock.destroy();
    await until('the fds of before', () => describeLeak(before, openFds()) === '', 3_000).catch(() => {});
    const left = describeLeak(before, openFds());
    await rig.close();
    assert.equal(left, '', 'fds left open (the broker ends of the connections)');
  }
});
