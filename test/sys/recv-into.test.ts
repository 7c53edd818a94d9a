// recvInto, the read every stream connection makes: bytes straight into the
// caller's buffer, the count returned as a number, and what came besides
// bytes (fds, a cut of the control data) in one per-thread Int32Array
// (recvIntoFds) instead of an object per read. Each read rewrites it, so fds
// are never seen twice; EAGAIN, hang-up and a cut report as before.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { MemFd, native } from '../../src/sys/index.js';
import { openFdCount, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const R = native.recvIntoFds;

function pair(): [number, number] {
  return native.unixPair(true);
}

/** The fd's close-on-exec flag, from /proc/self/fdinfo (O_CLOEXEC is 02000000 in its octal flags). */
function closeOnExec(fd: number): boolean {
  const flags = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
  return (Number.parseInt(flags, 8) & 0o2000000) !== 0;
}

function inodeOf(fd: number): bigint {
  return native.fstat(fd).ino;
}

test('bytes without fds: the count, at the offset; no fds, no cut', () => {
  const [a, b] = pair();
  try {
    native.sendmsg(a, Buffer.from('hello'), []);
    const buf = Buffer.alloc(16, 0x2e);
    assert.equal(native.recvInto(b, buf, 3, 13, 8), 5);
    assert.equal(buf.toString('latin1', 0, 8), '...hello');
    assert.deepEqual([R[0], R[1]], [0, 0]);
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('fds come in recvIntoFds, usable and close-on-exec; the next read without fds says none', () => {
  const [a, b] = pair();
  const memfds = [0, 1, 2].map((i) => MemFd.create(`recv-into-${i}`, { size: 4096 }));
  try {
    native.sendmsg(
      a,
      Buffer.from('x'),
      memfds.map((m) => m.fd.fd),
    );
    const buf = Buffer.alloc(16);
    assert.equal(native.recvInto(b, buf, 0, 16, 8), 1);
    assert.deepEqual([R[0], R[1]], [3, 0]);
    const got = [R[2]!, R[3]!, R[4]!];
    try {
      assert.deepEqual(
        got.map(inodeOf),
        memfds.map((m) => inodeOf(m.fd.fd)),
      );
      for (const fd of got) assert.equal(closeOnExec(fd), true);
    } finally {
      for (const fd of got) native.close(fd);
    }
    native.sendmsg(a, Buffer.from('y'), []);
    assert.equal(native.recvInto(b, buf, 0, 16, 8), 1);
    assert.deepEqual(
      [R[0], R[1]],
      [0, 0],
      'a read without fds must not leave the last read’s fds to take again',
    );
  } finally {
    for (const m of memfds) m.close();
    native.close(a);
    native.close(b);
  }
});

test('more fds than maxFds: the first maxFds come, the cut is reported, the rest are closed', () => {
  const [a, b] = pair();
  const memfds = [0, 1, 2].map((i) => MemFd.create(`recv-into-cut-${i}`, { size: 4096 }));
  try {
    const before = openFdCount();
    const buf = Buffer.alloc(16);
    native.sendmsg(
      a,
      Buffer.from('x'),
      memfds.map((m) => m.fd.fd),
    );
    assert.equal(native.recvInto(b, buf, 0, 16, 2), 1);
    assert.deepEqual([R[0], R[1]], [2, 1]);
    const got = [R[2]!, R[3]!];
    assert.equal(openFdCount(), before + 2, 'only the two taken fds are open');
    for (const fd of got) native.close(fd);

    native.sendmsg(a, Buffer.from('z'), [memfds[0]!.fd.fd]);
    assert.equal(native.recvInto(b, buf, 0, 16, 0), 1);
    assert.deepEqual([R[0], R[1]], [0, 1], 'maxFds 0: any fd is a cut');
    assert.equal(openFdCount(), before);
  } finally {
    for (const m of memfds) m.close();
    native.close(a);
    native.close(b);
  }
});

test('EAGAIN is -1 and hang-up is 0, both without fds', () => {
  const [a, b] = pair();
  const buf = Buffer.alloc(16);
  try {
    assert.equal(native.recvInto(b, buf, 0, 16, 8), -1);
    assert.deepEqual([R[0], R[1]], [0, 0]);
    native.close(a);
    assert.equal(native.recvInto(b, buf, 0, 16, 8), 0);
    assert.deepEqual([R[0], R[1]], [0, 0]);
  } finally {
    native.close(b);
  }
});

test('a range outside the buffer is refused before any read, and leaves no fds from an earlier read', () => {
  const [a, b] = pair();
  try {
    using memfd = MemFd.create('recv-into-stale', { size: 4096 });
    native.sendmsg(a, Buffer.from('z'), [memfd.fd.fd]);
    assert.equal(native.recvInto(b, Buffer.alloc(1), 0, 1, 8), 1);
    assert.equal(R[0], 1);
    native.close(R[2]!);
    native.sendmsg(a, Buffer.from('kept'), []);
    const buf = Buffer.alloc(8);
    assert.throws(() => native.recvInto(b, buf, 6, 4, 8), {
      code: 'ERR_DEVLEASE_INVALID_ARG',
      message: /exceed buf/,
    });
    assert.deepEqual([R[0], R[1]], [0, 0], 'a refused call rewrites recvIntoFds too');
    assert.equal(native.recvInto(b, buf, 0, 8, 8), 4, 'the refused call read nothing');
  } finally {
    native.close(a);
    native.close(b);
  }
});
