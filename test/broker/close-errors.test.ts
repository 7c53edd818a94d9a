// Descriptors whose close(2) fails: a file on a FUSE file system whose server answers every FLUSH with EIO, which
// any local user can mount (fusermount3) and pass to the broker. close(2) releases the number anyway; the broker
// must neither throw from a cleanup path (a socket's hang-up runs from the poll callback, where a throw ends the
// process) nor keep anything. Before the fix, Fd.close() threw EIO, and a client that sent two such fds with a
// message it never finished, then hung up, took the broker down before any VERSION.
import assert from 'node:assert/strict';
import { closeSync, openSync, readlinkSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { Fd, native } from '../../src/sys/index.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

let fuse: FlushFailingFs;
const leakCheck = trackFdLeaks();
before(async () => {
  fuse = await mountFlushFailingFs();
});
after(async () => {
  await fuse.unmount();
  await leakCheck();
});

/** What descriptor `fd` of this process names now, or null if none. */
function target(fd: number): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return null;
  }
}

/** This test's own close of a descriptor of the FUSE file: close(2) fails with EIO and releases it. */
function closeOurs(fd: number): void {
  assert.throws(() => closeSync(fd), { code: 'EIO' }, 'the fixture: close(2) of its file fails with EIO');
  assert.equal(target(fd), null, 'close(2) released it all the same');
}

test('Fd.close() of a descriptor whose close(2) fails with EIO releases it without throwing; a number not open still throws EBADF', () => {
  const before = fuse.flushes();
  const n = openSync(fuse.file, 'r');
  const fd = new Fd(n);
  fd.close();
  assert.equal(fuse.flushes(), before + 1, 'close(2) ran and its FLUSH was refused');
  assert.equal(fd.closed, true);
  assert.notEqual(target(n)?.startsWith(fuse.file), true, 'the descriptor is released');
  fd.close(); // idempotent
  // The one close error that is a bug of ours: the number was not open.
  const spare = openSync('/dev/null', 'r');
  closeSync(spare);
  assert.throws(() => native.close(spare), { code: 'EBADF', syscall: 'close' });
});

test('a client that sends fds whose close fails with a message it never finishes, then hangs up, costs the broker nothing', async () => {
  const rig = await startRig();
  let c: ClientProc | null = null;
  // An fd the broker failed to close is closed by its finalizer later, with this warning: none may come.
  const leaked: string[] = [];
  const onWarning = (w: Error) => {
    if (w.name === 'DevleaseLeak') leaked.push(w.message);
  };
  process.on('warning', onWarning);
  try {
    const sock = native.unixConnect(rig.socket, true);
    const a = openSync(fuse.file, 'r');
    const b = openSync(fuse.file, 'r');
    // A VERSION header that claims 64 bytes, and only the header: the broker holds the fds for the rest of it.
    const head = Buffer.alloc(16);
    head.writeUInt16LE(1, 0); // msg_id
    head.writeUInt16LE(1, 2); // VFIO_USER_VERSION
    head.writeUInt32LE(64, 4); // msg_size
    native.sendmsg(sock, head, [a, b]);
    closeOurs(a);
    closeOurs(b);
    const flushed = fuse.flushes();
    native.close(sock); // hang up mid-message
    await until('the broker to close both fds it was sent', () => fuse.flushes() >= flushed + 2);
    // Still serving: the next client gets its lease, and the hang-up left no session behind.
    c = await ClientProc.spawn();
    const { info } = await c.call('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
    assert.deepEqual(
      rig.broker.leases.all().map((l) => l.id),
      [info.lease],
      'one lease: the hostile connection made none',
    );
    global.gc?.();
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(leaked, [], 'every fd closed by its owner, none left to the garbage collector');
  } finally {
    process.off('warning', onWarning);
    await c?.exit();
    await rig.close();
  }
});
