// Reading ahead on the SOCK_STREAM wire: one recvmsg at a message boundary
// brings as many messages as the kernel holds, and they are split out. What
// must still hold: fds go with the last message that starts in the read that
// brought them (the kernel stops a read right after the skb carrying fds),
// fds that come with the rest of a message cut the peer off, messages read
// ahead wait while reading is paused and are handed over by partial().
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd, Fd, MemFd, native, type StreamMessage, StreamSocket } from '../../src/sys/index.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { body, collect, frame, framing, tick } from '../helpers/stream-frames.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(() => leakCheck());

/** Waits (a bounded while) until `cond` holds. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await tick();
  }
}
const closeAll = (fds: readonly Fd[]) => {
  for (const fd of fds) fd.close();
};
const sameFile = (a: Fd, b: Fd) => native.fstat(a.fd).ino === native.fstat(b.fd).ino;

test('messages that wait in the kernel together are delivered one by one, each its own buffer', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    // No listener yet: all of it is in the kernel when the first read is made.
    a.send(frame('one'));
    a.send(frame('two'));
    a.send(frame(''));
    const r = collect(b);
    await until(() => r.got.length >= 3, 'r.got.length >= 3');
    assert.deepEqual(r.got.map(body), ['one', 'two', '']);
    r.got[0]!.data.fill(0);
    assert.equal(body(r.got[1]!), 'two', 'a message does not share bytes another one can change');
    a.close();
    b.close();
  });
});

test('a message cut off by the end of a read (in its header, or after it) arrives whole', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    for (const cut of [3, 8, 12]) {
      const m = frame(`cut at ${cut}`);
      a.send(Buffer.concat([frame('whole'), m.subarray(0, cut)]));
      const before = r.got.length;
      await until(() => r.got.length >= before + 1, 'r.got.length >= before + 1');
      await tick();
      assert.equal(r.got.length, before + 1, 'nothing delivered of the cut message yet');
      a.send(m.subarray(cut));
      await until(() => r.got.length >= before + 2, 'r.got.length >= before + 2');
      assert.deepEqual(r.got.slice(before).map(body), ['whole', `cut at ${cut}`]);
    }
    a.close();
    b.close();
  });
});

test('fds sent with the second of two back-to-back messages land on the second', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const mem = MemFd.create('second', { size: 4096 });
    // All in the kernel before the first read: one read brings "first" and "second" with the fd.
    a.send(frame('first'));
    a.send(frame('second'), [mem.fd]);
    a.send(frame('third'));
    a.send(frame('fourth'), [mem.fd, mem.fd]);
    const r = collect(b);
    await until(() => r.got.length >= 4, 'r.got.length >= 4');
    assert.deepEqual(
      r.got.map((m) => [body(m), m.fds.length]),
      [
        ['first', 0],
        ['second', 1],
        ['third', 0],
        ['fourth', 2],
      ],
    );
    assert.ok(sameFile(r.got[1]!.fds[0]!, mem.fd), 'the very memfd that was sent');
    closeAll(r.got.flatMap((m) => m.fds));
    mem.close();
    a.close();
    b.close();
  });
});

test('fds that come with the rest of a message whose start came in an earlier read: EPROTO, fds closed', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const r = collect(b);
    const e = new EventFd();
    const m = frame('fds in the middle');
    a.send(Buffer.concat([frame('fine'), m.subarray(0, 10)]));
    await until(() => r.got.length >= 1, 'r.got.length >= 1');
    await tick();
    a.send(m.subarray(10), [e.fd]);
    e.close();
    await within(r.closed, 'the peer cut off');
    assert.deepEqual(r.got.map(body), ['fine']);
    assert.equal(r.errors[0]?.code, 'EPROTO');
    assert.match(r.errors[0]!.message, /fds arrived 10 bytes into a message/);
    a.close();
  });
});

test('an oversized frame behind a good one in the same read: the good one, then EPROTO', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    for (const size of [4, 4097]) {
      const [a, b] = StreamSocket.pair({ framing, maxMessage: 4096 });
      const mem = MemFd.create('behind', { size: 4096 });
      const bad = Buffer.alloc(8);
      bad.writeUInt32LE(size, 0);
      a.send(Buffer.concat([frame('good'), bad, frame('never')]), [mem.fd]);
      mem.close();
      const r = collect(b);
      await within(r.closed, 'the peer cut off');
      assert.deepEqual(r.got.map(body), ['good']);
      assert.equal(r.got[0]!.fds.length, 0, 'the fds came with the read, not with "good"');
      assert.equal(r.errors[0]?.code, 'EPROTO', `size ${size}`);
      assert.match(r.errors[0]!.message, new RegExp(`message size ${size} outside \\[8, 4096\\]`));
      a.close();
    }
  });
});

test('messages read ahead wait while paused, are handed over by partial(), and come on resume', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const mem = MemFd.create('read-ahead', { size: 4096 });
    const cut = frame('cut');
    a.send(frame('one'));
    a.send(frame('two'));
    a.send(Buffer.concat([frame('three'), cut.subarray(0, 5)]), [mem.fd]);
    const got: StreamMessage[] = [];
    b.on('message', (m: StreamMessage) => {
      got.push(m);
      b.pause(); // one at a time
    });
    await until(() => got.length >= 1, 'got.length >= 1');
    for (let i = 0; i < 5; i++) await tick();
    assert.deepEqual(got.map(body), ['one'], 'paused: nothing more is delivered');
    // What a handover carries: the messages read and not delivered; the fds are the last one's.
    const p = b.partial();
    assert.equal(p.data.length, frame('two').length + frame('three').length + 5);
    assert.equal(p.fds.length, 1);
    const handed = new StreamSocket(new Fd(native.dup(b.fd.fd)), {
      framing,
      partial: { data: p.data, fds: p.fds.map((d) => new Fd(native.dup(d.fd))) },
    });
    const h = collect(handed);
    a.send(cut.subarray(5));
    await until(() => h.got.length >= 3, 'h.got.length >= 3');
    assert.deepEqual(
      h.got.map((m) => [body(m), m.fds.length]),
      [
        ['two', 0],
        ['three', 0],
        ['cut', 1],
      ],
    );
    assert.ok(sameFile(h.got[2]!.fds[0]!, mem.fd));
    // The original, resumed with nothing new from the peer, delivers what it had read; the fd stays with "cut",
    // which the other socket finished reading (closed with the original).
    b.removeAllListeners('message');
    const rest = collect(b);
    b.resume();
    await until(() => rest.got.length >= 2, 'rest.got.length >= 2');
    assert.deepEqual(
      rest.got.map((m) => [body(m), m.fds.length]),
      [
        ['two', 0],
        ['three', 0],
      ],
    );
    closeAll([...h.got, ...rest.got].flatMap((m) => m.fds));
    mem.close();
    handed.close();
    a.close();
    b.close();
  });
});

test('more messages in one read than one batch: all delivered, in order', { timeout: 20_000 }, async () => {
  await assertNoFdLeak(async () => {
    const [a, b] = StreamSocket.pair({ framing });
    const n = 10_000; // ~100 KiB: more than one read, and many batches of each read
    for (let i = 0; i < n; i++) a.send(frame(String(i)));
    const r = collect(b);
    await until(() => r.got.length >= n, 'r.got.length >= n');
    assert.ok(r.got.every((m, i) => body(m) === String(i)));
    a.close();
    b.close();
  });
});

test('a handed-over partial announcing a bad size: EPROTO, the socket fd closed, its fds left to the caller', {
  timeout: 20_000,
}, async () => {
  await assertNoFdLeak(async () => {
    const [x, y] = native.unixPair(true);
    const peer = new Fd(y);
    const sockFd = new Fd(x);
    const e = new EventFd();
    const bad = Buffer.concat([frame('whole'), Buffer.from([0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0])]);
    assert.throws(
      () => new StreamSocket(sockFd, { framing, partial: { data: bad, fds: [e.fd] } }),
      (err: Error & { code?: string }) => err.code === 'EPROTO' && /announces/.test(err.message),
    );
    assert.equal(sockFd.closed, true, 'the socket fd is closed, as for a bad option');
    assert.equal(e.fd.closed, false, "the partial's fds are still the caller's");
    e.close();
    peer.close();
  });
});
