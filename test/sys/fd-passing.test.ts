// Acceptance: fds passed between two processes arrive usable (1 fd and the
// maximum, 16); send() queues in order when the socket is full.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Fd, MAX_FDS, MemFd, native, pwrite, SeqpacketSocket } from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peer } from '../helpers/sys-peer.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
let peer: Peer;
before(async () => {
  peer = await Peer.spawn();
});
after(async () => {
  await peer.stop();
  await leakCheck();
});

function labelledMemfds(count: number, prefix: string): MemFd[] {
  return Array.from({ length: count }, (_, i) => {
    const m = MemFd.create(`${prefix}-${i}`, { size: 4096 });
    pwrite(m.fd, Buffer.from(`${prefix}-${i}`), 0);
    return m;
  });
}

for (const count of [1, MAX_FDS]) {
  test(`${count} fd(s) sent to another process arrive usable`, async () => {
    const memfds = labelledMemfds(count, `fd${count}`);
    try {
      const took = await peer.call(
        'take',
        {},
        memfds.map((m) => m.fd),
      );
      const indices = took.indices as number[];
      assert.equal(indices.length, count);
      const read = await peer.call('readFds', { indices });
      assert.deepEqual(
        read.texts,
        memfds.map((_, i) => `fd${count}-${i}`),
      );
      // The sender still owns its fds: sending dup'd them in the kernel.
      for (const m of memfds) assert.equal(m.fd.closed, false);
      for (const i of indices) await peer.call('closeFd', { fd: i });
    } finally {
      for (const m of memfds) m.close();
    }
  });
}

test('more than MAX_FDS fds is refused before any syscall and leaves caller fds alone', () => {
  const [a, b] = SeqpacketSocket.pair();
  const memfds = labelledMemfds(MAX_FDS + 1, 'many');
  try {
    assert.throws(
      () =>
        a.send(
          Buffer.from('x'),
          memfds.map((m) => m.fd),
        ),
      { code: 'ERR_DEVLEASE_TOO_MANY_FDS' },
    );
    assert.throws(() => native.sendmsg(a.fd.fd, Buffer.from('x'), new Array(MAX_FDS + 1).fill(0)), {
      code: 'ERR_DEVLEASE_TOO_MANY_FDS',
    });
    for (const m of memfds) assert.equal(m.fd.closed, false);
  } finally {
    for (const m of memfds) m.close();
    a.close();
    b.close();
  }
});

test('a full socket queues messages and delivers them in order, fds included', async () => {
  const [a, b] = SeqpacketSocket.pair();
  const memfd = MemFd.create('queued', { size: 4096 });
  pwrite(memfd.fd, Buffer.from('payload'), 0);
  const total = 2000;
  const chunk = Buffer.alloc(8192);
  try {
    for (let i = 0; i < total; i++) {
      chunk.writeUInt32LE(i, 0);
      a.send(chunk, i % 100 === 0 ? [memfd.fd] : []);
    }
    assert.ok(a.queued > 0, 'expected the socket buffer to fill so that send() had to queue');
    const received: number[] = [];
    let withFd = 0;
    const all = new Promise<void>((resolve) => {
      b.on('message', (msg) => {
        const i = msg.data.readUInt32LE(0);
        received.push(i);
        if (i % 100 === 0) {
          assert.equal(msg.fds.length, 1);
          const buf = Buffer.alloc(7);
          native.pread(msg.fds[0]!.fd, buf, 0);
          assert.equal(buf.toString(), 'payload');
          withFd++;
        } else {
          assert.equal(msg.fds.length, 0);
        }
        for (const fd of msg.fds) fd.close();
        if (received.length === total) resolve();
      });
    });
    await within(all, `all ${total} messages`, 10_000);
    assert.deepEqual(
      received,
      Array.from({ length: total }, (_, i) => i),
    );
    assert.equal(withFd, total / 100);
    assert.equal(a.queued, 0);
  } finally {
    memfd.close();
    a.close();
    b.close();
  }
});

test('Fd.dup gives an independent owner; release hands the number over', () => {
  const m = MemFd.create('dup');
  const copy = m.fd.dup();
  assert.notEqual(copy.fd, m.fd.fd);
  m.close();
  assert.equal(native.fstat(copy.fd).size, 0);
  const n = copy.release();
  assert.equal(copy.closed, true);
  new Fd(n).close();
});
