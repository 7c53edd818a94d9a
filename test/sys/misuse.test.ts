// Misuse is refused with ERR_DEVLEASE_* codes before any syscall; syscall
// failures carry code/errno/syscall; every handle refuses use after close()
// with ERR_DEVLEASE_CLOSED and closes idempotently.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  EventFd,
  Fd,
  Inotify,
  ioctl,
  isSysError,
  MAX_FDS,
  Mapping,
  MemFd,
  native,
  PidFd,
  pread,
  pwrite,
  SeqpacketSocket,
} from '../../src/sys/index.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const INVALID = { code: 'ERR_DEVLEASE_INVALID_ARG' };
const CLOSED = { code: 'ERR_DEVLEASE_CLOSED' };

test('wrong argument types are refused with ERR_DEVLEASE_INVALID_ARG', () => {
  const raw = native as unknown as Record<string, (...args: unknown[]) => unknown>;
  assert.throws(() => raw.close!('3'), INVALID);
  assert.throws(() => raw.close!(-1), INVALID);
  assert.throws(() => raw.close!(1.5), INVALID);
  assert.throws(() => raw.pread!(0, 'not a buffer', 0), INVALID);
  assert.throws(() => raw.pread!(0, Buffer.alloc(1), -1), INVALID);
  assert.throws(() => raw.ioctl!(0, 1, 'x'), INVALID);
  assert.throws(() => raw.memfdCreate!(42, 0), INVALID);
  assert.throws(() => raw.memfdCreate!('a\0b', 0), INVALID);
  assert.throws(() => raw.sendmsg!(0, Buffer.alloc(1), ['x']), INVALID);
  assert.throws(() => raw.poll!(0, 1, 'not a function'), INVALID);
  assert.throws(() => new Fd(-1), INVALID);
  assert.throws(() => Mapping.map(0, { length: 0 }), INVALID);
  assert.throws(() => SeqpacketSocket.pair({ maxFds: MAX_FDS + 1 }), INVALID);
  using memfd = MemFd.create('invalid');
  assert.throws(() => memfd.truncate(-1), INVALID);
  using pidfd = PidFd.open(process.pid);
  assert.throws(() => pidfd.sendSignal('SIGNOPE' as NodeJS.Signals), INVALID);
});

test('syscall failures carry code, errno and syscall', () => {
  using efd = new EventFd();
  let caught: unknown;
  try {
    native.ftruncate(efd.fd.fd, 10);
  } catch (err) {
    caught = err;
  }
  assert.ok(isSysError(caught, 'EINVAL'));
  assert.equal((caught as Error).message, 'ftruncate: Invalid argument');
  assert.equal((caught as { errno: number }).errno, 22);
  assert.equal((caught as { syscall: string }).syscall, 'ftruncate');

  using memfd = MemFd.create('errors', { size: 4096 });
  assert.throws(() => ioctl(memfd.fd, 0x1234, 0), { code: 'ENOTTY', syscall: 'ioctl' });
  assert.throws(() => memfd.addSeals(1), { code: 'EPERM', syscall: 'fcntl' }, 'sealing was not allowed');
  using inotify = new Inotify();
  assert.throws(() => inotify.watch('/nonexistent/devlease', 2, () => {}), {
    code: 'ENOENT',
    syscall: 'inotify_add_watch',
  });
  assert.throws(() => native.fstat(987654), { code: 'EBADF', errno: 9, syscall: 'fstat' });
});

test('pread/pwrite/ioctl wrappers take an Fd or a number', () => {
  using memfd = MemFd.create('rw', { size: 4096 });
  assert.equal(pwrite(memfd.fd, Buffer.from('abc'), 10n), 3);
  const out = Buffer.alloc(3);
  assert.equal(pread(memfd.fd.fd, out, 10), 3);
  assert.equal(out.toString(), 'abc');
  const FIONREAD = 0x541b;
  const [a, b] = SeqpacketSocket.pair();
  try {
    a.send(Buffer.from('12345'));
    const count = new Int32Array(1);
    ioctl(b.fd, FIONREAD, new Uint8Array(count.buffer));
    assert.equal(count[0], 5);
  } finally {
    a.close();
    b.close();
  }
});

test('sealed memfds refuse to grow or shrink', () => {
  using memfd = MemFd.create('sealed', { size: 4096, sealing: true });
  memfd.addSeals(native.constants.F_SEAL_SHRINK! | native.constants.F_SEAL_GROW!);
  assert.equal(memfd.seals & native.constants.F_SEAL_SHRINK!, native.constants.F_SEAL_SHRINK);
  assert.throws(() => memfd.truncate(0), { code: 'EPERM', syscall: 'ftruncate' });
  assert.throws(() => memfd.truncate(8192), { code: 'EPERM' });
  assert.equal(memfd.stat().size, 4096);
});

test('every handle refuses use after close() with ERR_DEVLEASE_CLOSED, and close() is idempotent', () => {
  const fd = new Fd(native.eventfd(0, 0));
  fd.close();
  fd.close();
  assert.throws(() => fd.fd, CLOSED);
  assert.throws(() => fd.dup(), CLOSED);

  const [a, b] = SeqpacketSocket.pair();
  a.close();
  a.close();
  b.close();
  assert.equal(a.closed, true);
  assert.throws(() => a.send(Buffer.from('x')), CLOSED);
  assert.throws(() => a.peerCred(), CLOSED);
  assert.throws(() => a.peerGroups(), CLOSED);
  assert.throws(() => a.peerPidfd(), CLOSED);

  const memfd = MemFd.create('closed', { size: 4096 });
  const mapping = memfd.map();
  memfd.close();
  memfd.close();
  assert.throws(() => memfd.truncate(0), CLOSED);
  assert.throws(() => memfd.reopen(), CLOSED);
  assert.throws(() => memfd.map(), CLOSED);
  mapping.unmap();
  mapping.close();
  assert.throws(() => mapping.u8, CLOSED);
  assert.throws(() => mapping.u32, CLOSED);

  const efd = new EventFd();
  efd.close();
  efd.close();
  assert.throws(() => efd.read(), CLOSED);
  assert.throws(() => efd.write(1), CLOSED);
  assert.throws(() => efd.onReadable(() => {}), CLOSED);

  const pidfd = PidFd.open(process.pid);
  pidfd.close();
  pidfd.close();
  assert.throws(() => pidfd.sendSignal(0), CLOSED);
  assert.throws(() => pidfd.onExit(() => {}), CLOSED);

  const inotify = new Inotify();
  inotify.close();
  inotify.close();
  assert.throws(() => inotify.watch('/', 1, () => {}), CLOSED);
  assert.throws(() => inotify.unwatch(1), CLOSED);
});
