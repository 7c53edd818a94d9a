// The admin client (adminRequest, behind `devlease status|revoke|…`) and the
// broker's admin socket under failure (issue 15, the fail-nth walk of revoke):
// every way a request can fail ends in an error with a `code` — the walk found
// bare Errors for a broker that hung up and for a timeout — and a socket error
// (a failed recvmsg on the client, a failed accept on the broker) is handled
// instead of being an uncaught 'error' event that takes the process down.
// The fail-nth hook is installed for this file (failCall fails one named
// native call), hence the dynamic imports.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

process.env.DEVLEASE_FAIL_NTH ??= '0';
const { failCall, failNth, failNthFired } = await import('../../src/sys/fail-nth.js');
const { adminRequest, adminRequestOver } = await import('../../src/cli/admin.js');
const { SeqpacketSocket } = await import('../../src/sys/index.js');
const { startRig } = await import('../helpers/broker-rig.js');
const { trackFdLeaks } = await import('../helpers/fds.js');

const SERVER = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'fixtures',
  'admin',
  'answering-server.js',
);
const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-admin-client-'));
const crashes: unknown[] = [];
const onCrash = (err: unknown) => crashes.push(err);
before(() => {
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
});
after(async () => {
  process.off('uncaughtException', onCrash);
  process.off('unhandledRejection', onCrash);
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

/** Runs the stand-in server answering `mode`; resolves with its socket path once it listens. */
async function withServer(
  mode: string,
  fn: (path: string, child: ChildProcess) => Promise<void>,
): Promise<void> {
  const path = join(dir, `${mode}.sock`);
  const child: ChildProcess = spawn(process.execPath, [SERVER, mode, path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`the ${mode} server did not start in 20 s`)), 20_000);
      child.stdout!.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) {
          clearTimeout(t);
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`the ${mode} server exited (${code})`)));
    });
    await fn(path, child);
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
}

const rejectsWith = async (p: Promise<unknown>, code: string, message: RegExp) => {
  await assert.rejects(p, (err: Error & { code?: unknown }) => {
    assert.equal(err.code, code, `expected code ${code}, got ${String(err.code)}: ${err.message}`);
    assert.match(err.message, message);
    return true;
  });
};

test('a broker that hangs up without answering: ECONNRESET', { timeout: 60_000 }, async () => {
  await withServer('close', (p) =>
    rejectsWith(adminRequest(p, { op: 'status' }), 'ECONNRESET', /closed the connection/),
  );
});

test('a broker that never answers: ETIMEDOUT at the deadline', { timeout: 60_000 }, async () => {
  await withServer('silent', (p) =>
    rejectsWith(adminRequest(p, { op: 'status' }, 300), 'ETIMEDOUT', /no answer .* in 300 ms/),
  );
});

test('an answer that is not JSON, or a refusal without a code: EPROTO', { timeout: 60_000 }, async () => {
  await withServer('garbage', (p) => rejectsWith(adminRequest(p, { op: 'status' }), 'EPROTO', /not JSON/));
  await withServer('nocode', (p) => rejectsWith(adminRequest(p, { op: 'status' }), 'EPROTO', /^no$/));
});

test("a broker that refused the connection before the request was sent: its refusal, not the send's EPIPE", {
  timeout: 60_000,
}, async () => {
  await withServer('refuse', async (p) => {
    const sock = SeqpacketSocket.connect(p);
    // The CLI sends on the tick it connects; the race is the broker's accept, refusal and close landing first.
    // Made certain here: this thread waits (its event loop not turning, as between the CLI's connect and send)
    // until the server has answered and hung up, so the send fails EPIPE with the refusal unread.
    const deadline = Date.now() + 20_000;
    const nap = new Int32Array(new SharedArrayBuffer(4));
    while (!existsSync(`${p}.refused`)) {
      if (Date.now() > deadline) throw new Error('the refusing server did not refuse in 20 s');
      Atomics.wait(nap, 0, 0, 5);
    }
    await rejectsWith(adminRequestOver(sock, p, { op: 'status' }), 'EACCES', /admin group/);
    assert.equal(sock.closed, true);
  });
});

test('no socket: the connect errno (ENOENT)', { timeout: 60_000 }, async () => {
  await rejectsWith(adminRequest(join(dir, 'nobody.sock'), { op: 'status' }), 'ENOENT', /./);
});

test("the client's recvmsg fails: the request rejects with that SysError, and the process lives", {
  timeout: 60_000,
}, async () => {
  await withServer('json', async (p) => {
    assert.equal(await adminRequest(p, { op: 'status' }), 'pong');
    failCall('recvmsg');
    try {
      await rejectsWith(adminRequest(p, { op: 'status' }), 'ENOMEM', /recvmsg/);
      assert.equal(failNthFired(), 'recvmsg');
    } finally {
      failNth(0);
    }
    assert.equal(await adminRequest(p, { op: 'status' }), 'pong', 'the next request is served');
  });
  assert.deepEqual(crashes, []);
});

test("the broker's admin accept fails: accepting backs off and resumes, and the broker lives", {
  timeout: 60_000,
}, async () => {
  const rig = await startRig();
  try {
    const admin = join(rig.broker.dir, 'admin.sock');
    failCall('unixAccept');
    try {
      // Accepted once the back-off ends (the connection waits in the listen backlog meanwhile).
      const status = (await adminRequest(admin, { op: 'status' }, 20_000)) as Record<string, unknown>;
      assert.equal(failNthFired(), 'unixAccept', 'the accept was made to fail');
      assert.ok(status && typeof status === 'object', 'status answered');
    } finally {
      failNth(0);
    }
  } finally {
    await rig.close();
  }
  assert.deepEqual(crashes, []);
});

test("the broker cannot tell an admin peer's credentials (SO_PEERCRED fails): that connection is closed, the broker lives", {
  timeout: 120_000,
}, async () => {
  const rig = await startRig();
  try {
    const admin = join(rig.broker.dir, 'admin.sock');
    failCall('peerCred');
    try {
      await rejectsWith(adminRequest(admin, { op: 'status' }, 20_000), 'ECONNRESET', /closed the connection/);
      assert.equal(failNthFired(), 'peerCred', 'the broker asked for the credentials and failed');
    } finally {
      failNth(0);
    }
    const status = await adminRequest(admin, { op: 'status' }, 20_000);
    assert.ok(status && typeof status === 'object', 'the next admin connection is served');
  } finally {
    await rig.close();
  }
  assert.deepEqual(crashes, []);
});

test("a reply longer than the admin connection's send buffer (SO_SNDBUF not raised) is an EMSGSIZE error, the connection kept", {
  timeout: 60_000,
}, async () => {
  const { SeqpacketSocket } = await import('../../src/sys/index.js');
  const rig = await startRig();
  try {
    const admin = join(rig.broker.dir, 'admin.sock');
    // As a broker without CAP_NET_ADMIN whose net.core.wmem_max is the default: the buffer stays ~212 KB. Such
    // a reply once failed sendmsg with EMSGSIZE, taken for a peer gone: the connection closed, its requests lost.
    failCall('setSendBuffer');
    const sock = SeqpacketSocket.connect(admin);
    try {
      const replies: { ok: boolean; code?: string; error?: string }[] = [];
      let closed = false;
      sock.on('message', (m) => replies.push(JSON.parse(m.data.toString('utf8'))));
      sock.on('close', () => {
        closed = true;
      });
      // An unknown op's error echoes it, each '"' escaped twice: ~400 KB.
      sock.send(Buffer.from(JSON.stringify({ op: '"'.repeat(100_000) })));
      sock.send(Buffer.from(JSON.stringify({ op: 'status' })));
      const deadline = Date.now() + 10_000;
      while (replies.length < 2 && !closed && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      assert.equal(failNthFired(), 'setSendBuffer', 'the broker tried to raise the buffer and failed');
      assert.equal(closed, false, 'the connection stays open');
      assert.equal(replies[0]?.code, 'EMSGSIZE');
      assert.match(
        replies[0]!.error!,
        /^the reply to "(\\")+" is \d+ bytes: more than the socket's send buffer takes/,
      );
      assert.equal(replies[1]?.ok, true, 'the request behind it is answered');
    } finally {
      failNth(0);
      sock.close();
    }
  } finally {
    await rig.close();
  }
  assert.deepEqual(crashes, []);
});
