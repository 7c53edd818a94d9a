// The admin socket's requests and connections against a real broker (in this
// process, on the simulator): arguments checked before anything is touched
// (upgrade's binary/config from whom, and which files; its deadline; drain's
// `on`; a request that is not an object), replies past the default socket
// buffer delivered or refused with EMSGSIZE (never a closed connection), and
// the connection limits and idle deadline; fds sent with a request are
// dropped by the kernel, never installed.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ADMIN_MAX_REPLY, AdminServer } from '../../src/broker/admin.js';
import { MAX_UPGRADE_DEADLINE_MS } from '../../src/broker/handover/upgrade.js';
import { adminRequest } from '../../src/cli/admin.js';
import { EventFd, MAX_FDS, type SeqpacketMessage, SeqpacketSocket } from '../../src/sys/index.js';
import { native } from '../../src/sys/native.js';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { fdTableSize, fillFdTable, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

/** An admin-group member that is not root nor the broker's user (the tests run as root). */
const MEMBER = { uid: 65534, gid: 65534 };
const leakCheck = trackFdLeaks();
let rig: Rig;
let admin: string;
const logged: string[] = [];

before(async () => {
  rig = await startRig({ config: { admin: { group: MEMBER.gid, mode: 0o660 } }, log: (l) => logged.push(l) });
  chmodSync(rig.dir, 0o755); // the member reaches the socket; its mode and group say the rest
  admin = join(rig.broker.dir, 'admin.sock');
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

const ask = (req: unknown, path = admin) =>
  adminRequest(path, req as Record<string, unknown>, 10_000).then(
    (result) => ({ ok: true as const, result }),
    (err: Error & { code?: string }) => ({ ok: false as const, code: err.code, message: err.message }),
  );

/** `devlease <args>` as `as` (another uid), against this broker's admin socket (which runs in this process). */
const cliAs = (as: { uid: number; gid: number }, ...args: string[]) =>
  new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [DEVLEASE_BIN, ...args, '--admin', admin], as, (err, stdout, stderr) =>
      resolve({ status: err ? Number(err.code) : 0, stdout, stderr }),
    );
  });

test('an admin-group member may not name the binary or config of an upgrade (EPERM, naming the field)', async () => {
  for (const field of ['binary', 'config']) {
    const r = await cliAs(MEMBER, 'upgrade', `--${field}`, DEVLEASE_BIN);
    assert.equal(r.status, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`"${field}" is taken only from root or the broker's user.*not uid 65534`),
    );
    assert.match(r.stderr, /admin-group member may upgrade to the configured binary and config only/);
  }
  assert.equal(rig.broker.upgrading, null, 'no upgrade began');
  // The member is served otherwise: it is in the admin group.
  const s = await cliAs(MEMBER, 'status', '--json');
  assert.equal(s.status, 0, s.stderr);
});

test("an upgrade's binary or config must be a root- or broker-owned file nobody else may write", async () => {
  const dir = join(rig.dir, 'files');
  const file = (name: string, mode: number, uid = 0) => {
    const p = join(rig.dir, name);
    writeFileSync(p, '// not run\n');
    chmodSync(p, mode);
    chownSync(p, uid, 0);
    return p;
  };
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ binary: 'dist/bin/devlease.js' }, 'EINVAL', /"binary" must be an absolute path/],
    [{ binary: join(dir, 'none.js') }, 'ENOENT', /"binary" .*none\.js: ENOENT/],
    [{ binary: rig.dir }, 'EINVAL', /"binary" .* is not a regular file/],
    [
      { binary: file('gw.js', 0o664) },
      'EPERM',
      /"binary" .*gw\.js is group- or world-writable \(mode 0664\)/,
    ],
    [{ config: file('ww.toml', 0o646) }, 'EPERM', /"config" .*ww\.toml is group- or world-writable/],
    [{ binary: file('theirs.js', 0o644, MEMBER.uid) }, 'EPERM', /"binary" .* owned by uid 65534, not root/],
    [{ binary: 42 }, 'EINVAL', /"binary" must be a path/],
  ];
  for (const [fields, code, message] of cases) {
    const r = await ask({ op: 'upgrade', ...fields });
    assert.equal(r.ok, false, JSON.stringify(fields));
    assert.equal(r.ok || r.code, code, `${JSON.stringify(fields)}: ${r.ok || r.message}`);
    assert.match(r.ok ? '' : r.message, message);
  }
  assert.equal(rig.broker.upgrading, null, 'no upgrade began');
});

test("an upgrade's deadlineMs is at most 10 min: past 2^31-1 ms its timer fired at once", async () => {
  for (const deadlineMs of [2 ** 31, MAX_UPGRADE_DEADLINE_MS + 1, 0, 1.5, '5000']) {
    const r = await ask({ op: 'upgrade', deadlineMs });
    assert.equal(r.ok || r.code, 'EINVAL', String(deadlineMs));
    assert.match(r.ok ? '' : r.message, /"deadlineMs" must be an integer from 1 to 600000/);
  }
  // The library's own entry point checks it too (a SIGUSR2 handler or an embedder). Were it not checked, the
  // new broker would refuse the state (a rollback: this broker carries on) rather than take this one's place.
  process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'] = 'refuse';
  try {
    await assert.rejects(rig.broker.upgrade({ binary: DEVLEASE_BIN, deadlineMs: 1e10 }), {
      code: 'EINVAL',
      message: /deadlineMs must be an integer from 1 to 600000/,
    });
  } finally {
    delete process.env['DEVLEASE_TEST_UPGRADE_MISBEHAVE'];
  }
  assert.equal(rig.broker.upgrading, null);
});

test('a request that is not a JSON object, and drain\'s "on" that is not a boolean, are named', async () => {
  for (const [req, got] of [
    [null, 'null'],
    [[], 'an array'],
    [7, 'number'],
  ] as const) {
    const r = await ask(req);
    assert.equal(r.ok || r.code, 'EINVAL');
    assert.match(r.ok ? '' : r.message, new RegExp(`a request is a JSON object .* got ${got}$`));
  }
  for (const on of ['false', 0, null]) {
    const r = await ask({ op: 'drain', on });
    assert.equal(r.ok || r.code, 'EINVAL');
    assert.match(r.ok ? '' : r.message, /drain: "on" must be true or false/);
    assert.equal(rig.broker.leases.draining, false, `"on": ${JSON.stringify(on)} left draining off`);
  }
  assert.deepEqual(await ask({ op: 'drain', on: false }), { ok: true, result: { draining: false } });
});

test('a reply past the default socket buffer is sent; one past ADMIN_MAX_REPLY is an EMSGSIZE error', async () => {
  // An unknown op's error echoes the op, each '"' escaped twice: a reply about 4 bytes per quote.
  const sock = SeqpacketSocket.connect(admin);
  native.setSendBuffer(sock.fd.fd, 1024 * 1024); // this end's requests are past the default buffer too
  const replies: { ok: boolean; code?: string; error?: string }[] = [];
  sock.on('message', (m: SeqpacketMessage) => replies.push(JSON.parse(m.data.toString('utf8'))));
  let closed = false;
  sock.on('close', () => {
    closed = true;
  });
  const big = '"'.repeat(100_000); // ~400 KB: past net.core.wmem_default (~212 KB)
  const huge = '"'.repeat(300_000); // ~1.2 MB: past ADMIN_MAX_REPLY
  try {
    sock.send(Buffer.from(JSON.stringify({ op: big })));
    sock.send(Buffer.from(JSON.stringify({ op: huge })));
    sock.send(Buffer.from(JSON.stringify({ op: 'status' })));
    await until(
      `3 replies (got ${replies.length}, closed ${closed})`,
      () => replies.length === 3 || closed,
      10_000,
    );
    assert.equal(closed, false, 'the connection stays open');
    assert.equal(replies[0]!.code, 'EINVAL');
    assert.ok(replies[0]!.error!.length > 200_000, 'the long reply came whole (its JSON ~400 KB)');
    assert.equal(replies[1]!.code, 'EMSGSIZE');
    assert.match(
      replies[1]!.error!,
      new RegExp(
        `the reply to "(\\\\")+" is \\d+ bytes: more than an admin reply carries \\(${ADMIN_MAX_REPLY}\\)`,
      ),
    );
    assert.equal(replies[2]!.ok, true, 'the request behind them is answered');
  } finally {
    sock.close();
  }
});

/** Open `n` admin connections, each answered once (so that the broker counts it). */
async function open(path: string, n: number) {
  const socks: { sock: SeqpacketSocket; reply: Promise<{ ok: boolean; code?: string; error?: string }> }[] =
    [];
  for (let i = 0; i < n; i++) {
    const sock = SeqpacketSocket.connect(path);
    const reply = new Promise<{ ok: boolean; code?: string; error?: string }>((resolve) => {
      sock.once('message', (m: SeqpacketMessage) => resolve(JSON.parse(m.data.toString('utf8'))));
      sock.once('close', () => resolve({ ok: false, code: 'closed' }));
    });
    sock.send(Buffer.from('{"op":"recovery"}'));
    await reply;
    socks.push({ sock, reply });
  }
  return socks;
}

test('admin connections are bounded in all and per uid; refusals are named and logged', async () => {
  const path = join(rig.broker.dir, 'admin-limits.sock');
  const server = new AdminServer(rig.broker, path, undefined, { maxConnections: 3, maxConnectionsPerUid: 2 });
  try {
    const mine = await open(path, 3);
    assert.equal((await mine[0]!.reply).ok, true);
    assert.equal((await mine[1]!.reply).ok, true);
    const refused = await mine[2]!.reply;
    assert.equal(refused.code, 'EAGAIN');
    assert.match(
      refused.error!,
      /too many admin connections: uid 0 has 2 admin connections open \(at most 2 per uid\)/,
    );
    assert.ok(logged.some((l) => /admin socket: refused a connection of pid \d+: uid 0 has 2/.test(l)));
    // Closing one frees its place, once the server has seen the hang-up: a connection is admitted then.
    mine[0]!.sock.close();
    const again: Awaited<ReturnType<typeof open>> = [];
    await until('a connection admitted in the freed place', async () => {
      const [c] = await open(path, 1);
      if ((await c!.reply).ok) again.push(c!);
      else c!.sock.close();
      return again.length > 0;
    });
    for (const s of [...mine, ...again]) s.sock.close();
  } finally {
    server.close();
  }
  const total = join(rig.broker.dir, 'admin-total.sock');
  const server2 = new AdminServer(rig.broker, total, undefined, { maxConnections: 2 });
  try {
    const socks = await open(total, 3);
    const refused = await socks[2]!.reply;
    assert.equal(refused.code, 'EAGAIN');
    assert.match(refused.error!, /2 admin connections are open \(at most 2\)/);
    for (const s of socks) s.sock.close();
  } finally {
    server2.close();
  }
});

test('an admin connection without a request for idleMs is closed (and logged)', async () => {
  const path = join(rig.broker.dir, 'admin-idle.sock');
  // Gaps of a quarter of idleMs, five of them: past idleMs in all (so each request restarted the deadline), each
  // far inside it (a loaded machine stretches a gap by its request's round trip only).
  const server = new AdminServer(rig.broker, path, undefined, { idleMs: 2000 });
  try {
    const [c] = await open(path, 1);
    let closed = false;
    c!.sock.on('close', () => {
      closed = true;
    });
    // Requests keep it open: each one restarts the deadline.
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setTimeout(r, 500));
      const got = new Promise((r) => c!.sock.once('message', r));
      c!.sock.send(Buffer.from('{"op":"recovery"}'));
      await got;
    }
    assert.equal(closed, false, 'a connection in use is not idle');
    await until('the idle connection to be closed', () => closed, 10_000);
    assert.ok(logged.some((l) => /closed a connection of uid 0 \(pid \d+\): no request in 2000 ms/.test(l)));
    // One that never sends a request too.
    const silent = SeqpacketSocket.connect(path);
    const gone = new Promise<void>((r) => silent.once('close', () => r()));
    await until(
      'the silent connection to be closed',
      async () => {
        await Promise.race([gone, new Promise((r) => setTimeout(r, 50))]);
        return silent.closed;
      },
      10_000,
    ).finally(() => silent.close());
  } finally {
    server.close();
  }
});

test('fds sent with an admin request are never installed in the broker; the request is answered', async () => {
  const sock = SeqpacketSocket.connect(admin);
  const efd = new EventFd();
  try {
    const reply = new Promise<{ ok: boolean }>((resolve, reject) => {
      sock.once('message', (m: SeqpacketMessage) => resolve(JSON.parse(m.data.toString('utf8'))));
      sock.once('close', () => reject(new Error('the broker closed the connection')));
    });
    // Room for 16 more fds in this process's table (the broker runs here): installing 253 would grow it.
    const fillers = fillFdTable(16);
    try {
      const size = fdTableSize();
      sock.send(Buffer.from('{"op":"recovery"}'), new Array(MAX_FDS).fill(efd.fd));
      assert.equal((await within(reply, 'the reply', 10_000)).ok, true, 'the request is answered');
      assert.equal(fdTableSize(), size, 'none of the 253 fds was installed');
    } finally {
      for (const f of fillers) f.close();
    }
  } finally {
    sock.close();
    efd.close();
  }
});
