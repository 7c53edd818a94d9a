// SOCK_STREAM framing, the vfio-user wire: a message split across many
// reads, several messages in one write, fds bound to the message whose first
// bytes they came with, peers that break the framing cut off alone, partial
// writes, a truncated message at hang-up, the accept back-off.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { EventFd, type Fd, MemFd, native, StreamServer, StreamSocket } from '../../src/sys/index.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { body, collect, frame, framing, tick } from '../helpers/stream-frames.js';

const leakCheck = trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'devlease-stream-'));
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

const closeAll = (fds: Fd[]) => {
  for (const fd of fds) fd.close();
};

test('a message split across many reads arrives whole, once', { timeout: 20_000 }, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    const m = frame('split into single bytes', 7);
    for (const byte of m) {
      a.send(Uint8Array.of(byte));
      await tick();
    }
    while (r.got.length === 0) await tick();
    assert.equal(r.got.length, 1);
    assert.equal(body(r.got[0]!), 'split into single bytes');
    assert.equal(r.got[0]!.data.readUInt32LE(4), 7);
    a.close();
    b.close();
  });
});

test('several messages in one write arrive as separate messages, in order', { timeout: 20_000 }, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    a.send(Buffer.concat([frame('one'), frame(''), frame('three'), frame('four')]));
    while (r.got.length < 4) await tick();
    assert.deepEqual(r.got.map(body), ['one', '', 'three', 'four']);
    a.close();
    b.close();
  });
});

test('fds sent with the first bytes belong to that message, not to its neighbours', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    const mem = MemFd.create('stream-fd', { size: 4096 });
    a.send(frame('before'));
    const carrier = frame('with fd');
    // The carrier's first 3 bytes with the fd, the rest later, then a plain message.
    a.send(carrier.subarray(0, 3), [mem.fd]);
    await tick();
    a.send(carrier.subarray(3));
    a.send(frame('after'));
    while (r.got.length < 3) await tick();
    assert.deepEqual(
      r.got.map((m) => [body(m), m.fds.length]),
      [
        ['before', 0],
        ['with fd', 1],
        ['after', 0],
      ],
    );
    const fd = r.got[1]!.fds[0]!;
    assert.equal(native.fstat(fd.fd).ino, native.fstat(mem.fd.fd).ino, 'the very memfd that was sent');
    closeAll(r.got.flatMap((m) => m.fds));
    mem.close();
    a.close();
    b.close();
  });
});

test('fds arriving after a message began cut the peer off (EPROTO); the fds are closed', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    const e = new EventFd();
    const m = frame('fds in the middle');
    a.send(m.subarray(0, 4));
    await tick();
    a.send(m.subarray(4), [e.fd]);
    e.close();
    await r.closed;
    assert.equal(r.got.length, 0);
    assert.equal(r.errors[0]?.code, 'EPROTO');
    assert.match(r.errors[0]!.message, /fds arrived 4 bytes into a message/);
    a.close();
  });
});

test('a size outside [header, maxMessage] cuts the peer off at once, without buffering it', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    for (const size of [0, 7, 4097, 0xffff_ffff]) {
      const [a, b] = StreamSocket.pair({ framing, maxMessage: 4096 });
      const r = collect(b);
      const h = Buffer.alloc(8);
      h.writeUInt32LE(size, 0);
      a.send(h);
      await r.closed;
      assert.equal(r.errors[0]?.code, 'EPROTO', `size ${size}`);
      assert.match(r.errors[0]!.message, new RegExp(`message size ${size} outside \\[8, 4096\\]`));
      a.close();
    }
  });
});

test('more fds than maxFds on one message cut the peer off; every fd is closed', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing, maxFds: 2 });
    const r = collect(b);
    const fds = [new EventFd(), new EventFd(), new EventFd()];
    a.send(
      frame('three fds'),
      fds.map((e) => e.fd),
    );
    for (const e of fds) e.close();
    await r.closed;
    assert.equal(r.errors[0]?.code, 'EPROTO');
    a.close();
  });
});

test('a message cut short by hang-up is dropped with its fds; close is emitted once', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    let closes = 0;
    b.on('close', () => closes++);
    const mem = MemFd.create('half', { size: 4096 });
    a.send(frame('complete'));
    a.send(frame('never finished').subarray(0, 12), [mem.fd]);
    mem.close();
    a.close();
    await r.closed;
    await tick();
    assert.deepEqual(r.got.map(body), ['complete']);
    assert.equal(r.errors.length, 0, 'a hang-up is not an error');
    assert.equal(closes, 1);
    closeAll(r.got.flatMap((m) => m.fds));
  });
});

test('a large message queues behind a full buffer and arrives intact, its fd exactly once', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing, maxMessage: 8 << 20 });
    const payload = Buffer.alloc(4 << 20);
    for (let i = 0; i < payload.length; i += 4) payload.writeUInt32LE(i, i);
    const mem = MemFd.create('big', { size: 4096 });
    a.send(frame(payload), [mem.fd]);
    a.send(frame('next'));
    mem.close();
    assert.ok(a.queuedBytes > 0, 'the kernel did not take 4 MiB at once');
    const r = collect(b);
    while (r.got.length < 2) await tick();
    assert.ok(r.got[0]!.data.subarray(8).equals(payload), 'every byte in order');
    assert.equal(r.got[0]!.fds.length, 1);
    assert.equal(r.got[1]!.fds.length, 0);
    assert.equal(body(r.got[1]!), 'next');
    assert.equal(a.queuedBytes, 0);
    closeAll(r.got.flatMap((m) => m.fds));
    a.close();
    b.close();
  });
});

test('StreamServer: listen/accept over SOCK_STREAM; a SEQPACKET client is refused with EPROTOTYPE', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const path = join(dir, 's.sock');
    const server = StreamServer.listen(path, { socket: { framing } });
    const accepted = once(server, 'connection');
    const client = StreamSocket.connect(path, { framing });
    const [conn] = (await accepted) as [StreamSocket];
    const r = collect(conn);
    client.send(frame('hello'));
    while (r.got.length === 0) await tick();
    assert.equal(body(r.got[0]!), 'hello');
    assert.equal(conn.peerCred().pid, process.pid);
    assert.throws(() => native.close(native.unixConnect(path, false)), { code: 'EPROTOTYPE' });
    client.close();
    conn.close();
    server.close();
  });
});
