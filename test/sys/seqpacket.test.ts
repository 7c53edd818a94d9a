// SOCK_SEQPACKET edge cases: truncation reporting, extra fds closed, EPIPE
// without SIGPIPE, listen/connect errors with codes, stale socket files,
// pausing while nobody listens.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  type Fd,
  MemFd,
  native,
  othersHaveOpen,
  type SeqpacketMessage,
  SeqpacketServer,
  SeqpacketSocket,
} from '../../src/sys/index.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-seqpacket-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

const nextMessage = (s: SeqpacketSocket) => once(s, 'message').then(([m]) => m as SeqpacketMessage);
const closeAll = (fds: Fd[]) => {
  for (const fd of fds) fd.close();
};

test('a message longer than maxMessage arrives cut, with truncated set', async () => {
  const [a, b] = SeqpacketSocket.pair({ maxMessage: 16 });
  try {
    a.send(Buffer.alloc(100, 7));
    const msg = await nextMessage(b);
    assert.equal(msg.truncated, true);
    assert.equal(msg.ctruncated, false);
    assert.deepEqual(msg.data, Buffer.alloc(16, 7));
    a.send(Buffer.alloc(16, 1));
    const exact = await nextMessage(b);
    assert.equal(exact.truncated, false);
    assert.equal(exact.data.length, 16);
  } finally {
    a.close();
    b.close();
  }
});

test('fds beyond what the receiver takes are closed and reported as ctruncated', async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = SeqpacketSocket.pair({ maxFds: 2 });
    const memfd = MemFd.create('ctrunc', { size: 4096 });
    const sent = Array.from({ length: 5 }, () => memfd.reopen());
    try {
      a.send(Buffer.from('five'), sent);
      closeAll(sent);
      const msg = await nextMessage(b);
      assert.equal(msg.ctruncated, true);
      assert.equal(msg.fds.length, 2);
      assert.equal(msg.data.toString(), 'five');
      assert.equal(othersHaveOpen(memfd.fd), true);
      closeAll(msg.fds);
      // No description survives anywhere: the three extra ones were closed.
      assert.equal(othersHaveOpen(memfd.fd), false);
    } finally {
      memfd.close();
      a.close();
      b.close();
    }
  });
});

test('sending to a closed peer throws EPIPE synchronously and raises no SIGPIPE', async () => {
  let sigpipes = 0;
  const onSigpipe = () => sigpipes++;
  process.on('SIGPIPE', onSigpipe);
  const [a, b] = SeqpacketSocket.pair();
  try {
    b.close();
    const memfd = MemFd.create('epipe');
    try {
      assert.throws(() => a.send(Buffer.from('x'), [memfd.fd]), {
        code: 'EPIPE',
        errno: 32,
        syscall: 'sendmsg',
      });
      assert.equal(memfd.fd.closed, false, 'a failed send leaves the caller fds alone');
    } finally {
      memfd.close();
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(sigpipes, 0);
  } finally {
    process.off('SIGPIPE', onSigpipe);
    a.close();
  }
});

test('peer hang-up emits close once, also without a message listener', async () => {
  const [a, b] = SeqpacketSocket.pair();
  const [c, d] = SeqpacketSocket.pair();
  let closes = 0;
  b.on('close', () => closes++);
  const bClosed = once(b, 'close');
  const dClosed = once(d, 'close');
  d.on('message', () => assert.fail('no message expected'));
  a.close();
  c.close();
  await bClosed;
  await dClosed;
  assert.equal(b.closed, true);
  b.close();
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(closes, 1);
});

test('messages wait in the kernel while no message listener is attached', async () => {
  const [a, b] = SeqpacketSocket.pair();
  try {
    a.send(Buffer.from('early'));
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setTimeout(resolve, 5));
    const msg = await nextMessage(b);
    assert.equal(msg.data.toString(), 'early');
    assert.throws(() => a.send(new Uint8Array(0)), { code: 'ERR_DEVLEASE_INVALID_ARG' });
  } finally {
    a.close();
    b.close();
  }
});

test('listen/connect: mode, ENOENT, EADDRINUSE for a live listener or a regular file, unlink on close', async () => {
  const path = join(dir, 'srv.sock');
  assert.throws(() => SeqpacketSocket.connect(path), { code: 'ENOENT', syscall: 'connect' });

  await assertNoFdLeak(async () => {
    const server = SeqpacketServer.listen(path, { mode: 0o640 });
    try {
      assert.equal(statSync(path).mode & 0o777, 0o640);
      const accepted = once(server, 'connection').then(([s]) => s as SeqpacketSocket);
      const client = SeqpacketSocket.connect(path);
      const conn = await accepted;
      client.send(Buffer.from('ping'));
      assert.equal((await nextMessage(conn)).data.toString(), 'ping');
      conn.send(Buffer.from('pong'));
      assert.equal((await nextMessage(client)).data.toString(), 'pong');
      client.close();
      conn.close();
      // A live listener is never replaced (its liveness probe shows up there as a connection that hangs up).
      const probed = once(server, 'connection').then(([s]) => s as SeqpacketSocket);
      assert.throws(() => SeqpacketServer.listen(path), { code: 'EADDRINUSE', syscall: 'bind' });
      const probe = await probed;
      await once(probe, 'close');
    } finally {
      server.close();
    }
    assert.throws(() => statSync(path), { code: 'ENOENT' }, 'close() removes the socket file');
  });

  writeFileSync(path, 'not a socket');
  assert.throws(
    () => SeqpacketServer.listen(path),
    { code: 'EADDRINUSE' },
    'a regular file is never removed',
  );
  rmSync(path);
});

test('a stale socket file refuses connections and is replaced by listen()', async () => {
  const path = join(dir, 'stale.sock');
  // A crashed listener leaves its socket file behind: bind+listen, then close
  // only the descriptor.
  native.close(native.unixListen(path, 0o600, 1, false));
  assert.throws(() => SeqpacketSocket.connect(path), { code: 'ECONNREFUSED', syscall: 'connect' });
  await assertNoFdLeak(async () => {
    const fresh = SeqpacketServer.listen(path);
    const accepted = once(fresh, 'connection').then(([s]) => s as SeqpacketSocket);
    const client = SeqpacketSocket.connect(path);
    (await accepted).close();
    client.close();
    fresh.close();
    fresh.close();
  });
});

test('without a connection listener, accepted sockets are closed', async () => {
  const path = join(dir, 'nolistener.sock');
  const server = SeqpacketServer.listen(path);
  const client = SeqpacketSocket.connect(path);
  await once(client, 'close');
  assert.equal(client.closed, true);
  server.close();
});
