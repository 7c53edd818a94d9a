// fds a stream socket's own process cannot take — its fd table full, RLIMIT_NOFILE lowered for real
// (helpers/fd-table.ts) — are that message's failure, not the peer's: the kernel reads the message's bytes all
// the same and sets MSG_CTRUNC, as it does for more fds than the buffer holds. recvInto tells the two apart
// (fewer fds than there was room for: an install failed), and the reader delivers the message whole, without
// fds, with `fdsLost` (EMFILE naming the full table); the connection carries on. More fds than maxFds still
// cut the peer off (EPROTO).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd, type Fd, MemFd, native, StreamSocket } from '../../src/sys/index.js';
import { RECV_CUT } from '../../src/sys/native.js';
import { fillFdTable } from '../helpers/fd-table.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { body, collect, frame, framing, tick } from '../helpers/stream-frames.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const R = native.recvIntoFds;

/** Waits (bounded) until `n` messages came; throws as soon as the socket is cut off instead. */
async function received(r: ReturnType<typeof collect>, s: StreamSocket, n: number, what: string) {
  const end = Date.now() + 5000;
  while (r.got.length < n) {
    if (s.closed) throw new Error(`${what}: the socket was cut off (${r.errors[0]?.message})`);
    if (Date.now() > end) throw new Error(`never happened: ${what}`);
    await tick();
  }
}
const FD_TABLE_FULL = /fd table of the receiving process \(pid \d+\) is full \(RLIMIT_NOFILE \d+\)/;

test('recvInto with the fd table full: the bytes whole, the cut said TABLE_FULL, none of the fds left open', {
  timeout: 20_000,
}, () => {
  const [a, b] = native.unixPair(true);
  const memfds = [0, 1, 2].map((i) => MemFd.create(`table-full-${i}`, { size: 4096 }));
  try {
    const table = fillFdTable();
    try {
      table.room(1); // the first of the three is installed, the second fails
      native.sendmsg(a, Buffer.from('whole'), [...memfds.map((m) => m.fd.fd)]);
      const buf = Buffer.alloc(16);
      assert.equal(native.recvInto(b, buf, 0, 16, 8), 5, 'the message’s bytes are read');
      assert.equal(buf.toString('latin1', 0, 5), 'whole');
      assert.deepEqual([R[0], R[1]], [0, RECV_CUT.TABLE_FULL]);
      // The slot freed is free again: the fd installed was closed (and nothing else was left open).
      assert.equal(table.free(), 1, 'the fd that was installed is closed');
      assert.equal(native.nofileLimit(), table.limit);
    } finally {
      table.restore();
    }
    // With room, the same peer's fds come.
    native.sendmsg(a, Buffer.from('next'), [memfds[0]!.fd.fd]);
    assert.equal(native.recvInto(b, Buffer.alloc(16), 0, 16, 8), 4);
    assert.deepEqual([R[0], R[1]], [1, RECV_CUT.NONE]);
    native.close(R[2]!);
  } finally {
    for (const m of memfds) m.close();
    native.close(a);
    native.close(b);
  }
});

test('a StreamSocket whose fd table is full: the message is delivered whole with fdsLost EMFILE, the connection carries on', {
  timeout: 20_000,
}, async () => {
  const [a, b] = StreamSocket.pair({ framing });
  const r = collect(b);
  const mem = MemFd.create('table-full-stream', { size: 4096 });
  try {
    const table = fillFdTable();
    try {
      // One read: the carrier (the read stops after its fds), then a plain message behind it.
      a.send(frame('carrier', 1), [mem.fd, mem.fd]);
      a.send(frame('behind', 2));
      // One whose fds come with its first bytes and the rest later (the reader finishes it in a second read).
      const split = frame('split carrier', 3);
      a.send(split.subarray(0, 5), [mem.fd]);
      await received(r, b, 2, 'the first two messages');
      a.send(split.subarray(5));
      await received(r, b, 3, 'the split message');
    } finally {
      table.restore();
    }
    assert.deepEqual(r.errors, [], 'the peer is not cut off');
    assert.equal(b.closed, false);
    assert.deepEqual(
      r.got.map((m) => [body(m), m.fds.length, m.fdsLost?.code ?? null]),
      [
        ['carrier', 0, 'EMFILE'],
        ['behind', 0, null],
        ['split carrier', 0, 'EMFILE'],
      ],
    );
    assert.match(r.got[0]!.fdsLost!.message, FD_TABLE_FULL);
    assert.equal(r.got[0]!.fdsLost!.errno, 24);
    // fds free again: the next message's fds come.
    a.send(frame('with room', 4), [mem.fd]);
    await received(r, b, 4, 'the message sent with room');
    const last = r.got[3]!;
    assert.deepEqual([body(last), last.fds.length, last.fdsLost], ['with room', 1, null]);
    assert.equal(native.fstat(last.fds[0]!.fd).ino, native.fstat(mem.fd.fd).ino);
    for (const fd of last.fds) fd.close();
  } finally {
    mem.close();
    a.close();
    b.close();
  }
});

test('a message whose fds were lost, read and not delivered, is not handed over (partial() throws); resumed, it is delivered', {
  timeout: 20_000,
}, async () => {
  const [a, b] = StreamSocket.pair({ framing });
  const r = collect(b);
  b.once('message', () => b.pause()); // the first is taken, the one read with it waits
  const mem = MemFd.create('table-full-partial', { size: 4096 });
  try {
    const table = fillFdTable();
    try {
      a.send(frame('first', 1));
      a.send(frame('lost', 2), [mem.fd]); // one read: the first, then this one (the read stops after its fds)
      await received(r, b, 1, 'the first message');
    } finally {
      table.restore();
    }
    // Handed over, it would be read as a message that came without fds.
    assert.throws(() => b.partial(), {
      code: 'EMFILE',
      message: /a message whose fds could not be received waits to be delivered .*: it cannot be handed over/,
    });
    b.resume();
    await received(r, b, 2, 'the waiting message');
    assert.deepEqual(
      r.got.map((m) => [body(m), m.fds.length, m.fdsLost?.code ?? null]),
      [
        ['first', 0, null],
        ['lost', 0, 'EMFILE'],
      ],
    );
    assert.deepEqual(
      b.partial(),
      { data: Buffer.alloc(0), fds: [] },
      'delivered: nothing is left to hand over',
    );
  } finally {
    mem.close();
    a.close();
    b.close();
  }
});

test('more fds than maxFds still cut the peer off (EPROTO), the table not full', {
  timeout: 20_000,
}, async () => {
  const [a, b] = StreamSocket.pair({ framing, maxFds: 2 });
  const r = collect(b);
  const fds: Fd[] = [];
  const events = [new EventFd(), new EventFd(), new EventFd()];
  try {
    a.send(
      frame('three fds'),
      events.map((e) => e.fd),
    );
    await within(r.closed, 'the cut');
    assert.equal(r.got.length, 0);
    assert.equal(r.errors[0]?.code, 'EPROTO');
    assert.match(r.errors[0]!.message, /a message carried more than 2 fds/);
  } finally {
    for (const e of events) e.close();
    for (const fd of fds) fd.close();
    a.close();
  }
});
