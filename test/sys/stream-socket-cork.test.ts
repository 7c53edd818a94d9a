// Corking a StreamSocket (cork/uncork, batch): messages without fds sent
// meanwhile are held and go in one sendmsg at uncork, in order; a message with
// fds flushes them first and goes alone (fds attributed as before, by our reader
// and by a raw recvmsg); past CORK_LIMIT they go without waiting; close while
// corked sends nothing more and leaks nothing. "One sendmsg" is checked by
// counting the calls: a stream recvmsg joins what several sends wrote.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Fd, MemFd, native, StreamSocket } from '../../src/sys/index.js';
import { CORK_LIMIT } from '../../src/sys/stream-socket.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { recordSendmsg } from '../helpers/sendmsg.js';
import { body, collect, frame, framing, tick } from '../helpers/stream-frames.js';

const leakCheck = trackFdLeaks();
test.after(() => leakCheck());

/** A StreamSocket on one end of a socketpair and the raw other end, read with recvmsg. */
function rawPeer() {
  const [x, y] = native.unixPair(true);
  const sock = new StreamSocket(new Fd(x), { framing });
  const raw = new Fd(y);
  const recv = () => native.recvmsg(raw.fd, 1 << 20, 8);
  return { sock, raw, recv, fd: x };
}

test('messages sent while corked wait for uncork, then arrive in one read, in order', async () => {
  await assertNoFdLeak(async () => {
    using sends = recordSendmsg();
    const { sock, raw, recv, fd } = rawPeer();
    const msgs = [frame('one'), frame('two', 2), frame('three', 3)];
    sock.cork();
    for (const m of msgs) sock.send(m);
    assert.equal(recv(), null, 'nothing is sent while corked');
    sock.uncork();
    const r = recv()!;
    assert.deepEqual(r.data, Buffer.concat(msgs));
    assert.equal(r.fds.length, 0);
    assert.equal(recv(), null);
    assert.deepEqual(
      sends.on(fd).map((c) => c.bytes),
      [r.data.length],
      'the three went in one sendmsg',
    );
    // Uncorked again: a send goes at once.
    sock.send(frame('four'));
    assert.deepEqual(recv()!.data, frame('four'));
    assert.equal(sends.on(fd).length, 2, 'a send after uncork is its own sendmsg');
    sock.close();
    raw.close();
  });
});

test('batch(fn) sends what fn sent when it returns, and when it throws', async () => {
  using sends = recordSendmsg();
  const { sock, raw, recv, fd } = rawPeer();
  const out = sock.batch(() => {
    sock.send(frame('a'));
    sock.send(frame('b'));
    assert.equal(recv(), null);
    return 7;
  });
  assert.equal(out, 7);
  assert.deepEqual(recv()!.data, Buffer.concat([frame('a'), frame('b')]));
  assert.equal(sends.on(fd).length, 1, 'what fn sent went in one sendmsg');
  assert.throws(
    () =>
      sock.batch(() => {
        sock.send(frame('c'));
        throw new Error('boom');
      }),
    /boom/,
  );
  assert.deepEqual(recv()!.data, frame('c'));
  assert.equal(sends.on(fd).length, 2, 'a batch that threw: one sendmsg');
  sock.close();
  raw.close();
});

test('a message with fds in a cork flushes what came before it and goes in its own sendmsg', async () => {
  await assertNoFdLeak(async () => {
    using mem = MemFd.create('cork-fd', { size: 4096 });
    // A raw recvmsg: af_unix stops a read at the message whose fds it hands over.
    {
      using sends = recordSendmsg();
      const { sock, raw, recv, fd } = rawPeer();
      sock.batch(() => {
        sock.send(frame('before'));
        sock.send(frame('with fd'), [mem.fd]);
        sock.send(frame('after'));
      });
      // What was corked before the fd message, the fd message alone, what came after it at the batch's end.
      assert.deepEqual(
        sends.on(fd).map((c) => [c.bytes, c.fds]),
        [
          [frame('before').length, 0],
          [frame('with fd').length, 1],
          [frame('after').length, 0],
        ],
      );
      const first = recv()!;
      assert.deepEqual(first.data, Buffer.concat([frame('before'), frame('with fd')]));
      assert.equal(first.fds.length, 1);
      assert.equal(native.fstat(first.fds[0]!).ino, native.fstat(mem.fd.fd).ino);
      for (const f of first.fds) native.close(f);
      const second = recv()!;
      assert.deepEqual(second.data, frame('after'));
      assert.equal(second.fds.length, 0);
      sock.close();
      raw.close();
    }
    // Our reader gives the fd to the message it was sent with.
    {
      const [a, b] = StreamSocket.pair({ framing });
      const r = collect(b);
      a.batch(() => {
        a.send(frame('before'));
        a.send(frame('with fd'), [mem.fd]);
        a.send(frame('after'));
      });
      while (r.got.length < 3) await tick();
      assert.deepEqual(r.got.map(body), ['before', 'with fd', 'after']);
      assert.deepEqual(
        r.got.map((m) => m.fds.length),
        [0, 1, 0],
      );
      for (const m of r.got) for (const f of m.fds) f.close();
      a.close();
      b.close();
    }
  });
});

test('corked bytes past CORK_LIMIT are sent without waiting for uncork', async () => {
  const { sock, raw, recv } = rawPeer();
  const big = (tag: number) => frame(Buffer.alloc(CORK_LIMIT / 4, tag), tag);
  const msgs = [big(1), big(2), big(3), big(4)];
  sock.cork();
  for (const m of msgs) sock.send(m);
  // The first three fit under the bound; the fourth would pass it: the three went, the fourth waits.
  let early = Buffer.alloc(0);
  for (let r = recv(); r; r = recv()) early = Buffer.concat([early, r.data]);
  assert.deepEqual(early, Buffer.concat(msgs.slice(0, 3)));
  sock.uncork();
  let rest = Buffer.alloc(0);
  for (let r = recv(); r; r = recv()) rest = Buffer.concat([rest, r.data]);
  assert.deepEqual(rest, msgs[3]);
  sock.close();
  raw.close();
});

test('close while corked sends what was corked (as uncorked sends would have gone), nothing after, leaks nothing', async () => {
  await assertNoFdLeak(async () => {
    using mem = MemFd.create('cork-close', { size: 4096 });
    const { sock, raw, recv } = rawPeer();
    sock.cork();
    sock.send(frame('sent first'), [mem.fd]);
    sock.send(frame('reply, then close'));
    sock.close();
    sock.uncork();
    assert.throws(() => sock.cork(), { code: 'ERR_DEVLEASE_CLOSED' });
    assert.throws(() => sock.send(frame('after close')), { code: 'ERR_DEVLEASE_CLOSED' });
    let got = Buffer.alloc(0);
    let eof = false;
    for (let r = recv(); r && !eof; r = recv()) {
      for (const f of r.fds) native.close(f);
      got = Buffer.concat([got, r.data]);
      eof = r.eof;
    }
    assert.deepEqual(got, Buffer.concat([frame('sent first'), frame('reply, then close')]));
    raw.close();
  });
});

test('a corked flush the kernel refuses for a moment is kept and sent when writable, in order', async () => {
  const { sock, raw, recv } = rawPeer();
  const realSend = native.sendmsg;
  let failNext = true;
  native.sendmsg = (fd, data, fds) => {
    if (failNext) {
      failNext = false;
      throw Object.assign(new Error('sendmsg: Cannot allocate memory (test)'), { code: 'ENOMEM', errno: 12 });
    }
    return realSend(fd, data, fds);
  };
  try {
    sock.batch(() => {
      sock.send(frame('x'));
      sock.send(frame('y'));
    });
    assert.equal(sock.closed, false, 'a transient failure does not close the socket');
    while (sock.queuedBytes > 0) await tick();
    assert.deepEqual(recv()?.data, Buffer.concat([frame('x'), frame('y')]));
  } finally {
    native.sendmsg = realSend;
    sock.close();
    raw.close();
  }
});

test('corkReads: what listeners send while one read is delivered goes in one sendmsg after it', async () => {
  await assertNoFdLeak(async () => {
    using sends = recordSendmsg();
    const [x, y] = native.unixPair(true);
    const server = new StreamSocket(new Fd(x), { framing });
    const raw = new Fd(y);
    server.corkReads();
    const arrivedEarly: boolean[] = [];
    let replies = 0;
    server.on('message', (m) => {
      // A reply sent for an earlier message of this read has not left yet.
      arrivedEarly.push(native.recvmsg(raw.fd, 1 << 16) !== null);
      server.send(frame(`re: ${body(m)}`));
      replies++;
    });
    try {
      sends.real(raw.fd, Buffer.concat([frame('a'), frame('b'), frame('c')]), []);
      while (replies < 3) await tick();
      assert.deepEqual(arrivedEarly, [false, false, false]);
      const r = native.recvmsg(raw.fd, 1 << 16);
      assert.deepEqual(r?.data, Buffer.concat([frame('re: a'), frame('re: b'), frame('re: c')]));
      assert.equal(sends.on(x).length, 1, 'the three replies went in one sendmsg');
      // Outside a read, a send goes at once.
      server.send(frame('later'));
      assert.deepEqual(native.recvmsg(raw.fd, 1 << 16)?.data, frame('later'));
    } finally {
      server.close();
      raw.close();
    }
  });
});
