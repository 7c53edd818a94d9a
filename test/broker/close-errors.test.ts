// Descriptors whose close(2) fails or never returns: a file on a FUSE file system whose server answers FLUSH
// with EIO, or holds the answer, which any local user can mount (fusermount3) and pass to the broker. close(2)
// releases the number whatever it says, and waits for a FLUSH uninterruptibly. The broker must neither throw
// from a cleanup path (a socket's hang-up runs from the poll callback, where a throw ends the process), nor
// block its one thread in such a close (native/close.cc hands those to a closer thread), nor keep anything.
// Before the fixes, Fd.close() threw EIO, and a client that sent two such fds with a message it never
// finished, then hung up, took the broker down before any VERSION; one whose server held FLUSH stopped it.
import assert from 'node:assert/strict';
import { closeSync, openSync, readlinkSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { RECEIVED } from '../../src/sys/fd.js';
import { Fd, native } from '../../src/sys/index.js';
import * as P from '../../src/vfio/user/protocol.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { unfinishedVersion } from '../helpers/unfinished-version.js';
import { clientOfRawServer } from '../vfio/helpers/raw-peer.js';

// The tests run without --expose-gc: this makes gc() callable (a fresh context picks the flag up), so a GC really
// runs before the finalizer's warnings are looked for (global.gc?.() was a no-op).
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

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

test('Fd.close() of a descriptor whose close(2) fails with EIO releases it without throwing; a number not open still throws EBADF', async () => {
  // One this process opened: closed at once.
  const before = fuse.flushes();
  const n = openSync(fuse.file, 'r');
  const fd = new Fd(n);
  fd.close();
  assert.equal(fd.closed, true);
  assert.equal(fuse.flushes(), before + 1, 'close(2) ran and its FLUSH was refused');
  assert.notEqual(target(n)?.startsWith(fuse.file), true, 'the descriptor is released');
  fd.close(); // idempotent
  // One another process sent (here marked so by hand): a file, so its close goes to the closer thread.
  const m = openSync(fuse.file, 'r');
  const received = new Fd(m, RECEIVED);
  received.close();
  await until('the closer thread to close it', () => native.closesPending() === 0, 5000);
  assert.equal(fuse.flushes(), before + 2);
  assert.notEqual(target(m)?.startsWith(fuse.file), true, 'the descriptor is released');
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
    native.sendmsg(sock, unfinishedVersion(), [a, b]);
    closeOurs(a);
    closeOurs(b);
    const flushed = fuse.flushes();
    native.close(sock); // hang up mid-message
    await until('the broker to close both fds it was sent', () => fuse.flushes() >= flushed + 2);
    await until('the closer thread to be done', () => native.closesPending() === 0);
    // Still serving: the next client gets its lease, and the hang-up left no session behind.
    c = await ClientProc.spawn();
    const { info } = await c.call('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
    assert.deepEqual(
      rig.broker.leases.all().map((l) => l.id),
      [info.lease],
      'one lease: the hostile connection made none',
    );
    gc();
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(leaked, [], 'every fd closed by its owner, none left to the garbage collector');
  } finally {
    process.off('warning', onWarning);
    await c?.exit();
    await rig.close();
  }
});

test('a descriptor whose close never returns (its FUSE server holds FLUSH) does not stop the broker: the next client is served meanwhile', async () => {
  // Its own mount: FLUSH answers held until release(), or for 10 s (a broker wrongly blocked comes back then).
  const held = await mountFlushFailingFs({ hold: true, holdMs: 10_000 });
  const rig = await startRig();
  // Started first: a child exec'd while the closer thread holds a descriptor would wait for it at exec, which
  // closes every O_CLOEXEC descriptor it inherited (fork copies the table) — that wait is the child's, not ours.
  const c = await ClientProc.spawn();
  try {
    const sock = native.unixConnect(rig.socket, true);
    const n = openSync(held.file, 'r');
    native.sendmsg(sock, unfinishedVersion(), [n]);
    native.closeReceived(n); // ours, as the broker closes a client's: the held FLUSH blocks the closer thread
    native.close(sock); // hang up: the broker closes its copy
    await until('the broker to let go of its copy (queued behind ours)', () => native.closesPending() >= 2);
    const { info } = await c.call('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
    assert.equal(held.answered(), 0, 'the lease was granted while the FLUSH was still held');
    assert.ok(native.closesPending() >= 1, 'the held close is still pending on the closer thread');
    held.release();
    await until('every held close to end', () => native.closesPending() === 0);
    assert.ok(held.answered() >= 2, `both closes flushed (${held.answered()})`);
  } finally {
    held.release();
    await c.exit();
    await rig.close();
    await until('the closer thread to be done', () => native.closesPending() === 0);
    await held.unmount();
  }
});

test("a DMA map's copy of a received fd is closed as received: an unmap does not wait for the fd's FUSE server", async () => {
  const held = await mountFlushFailingFs({ hold: true, holdMs: 10_000 });
  const { server, client, close } = await clientOfRawServer();
  try {
    // As the broker maps a client's fd for it (lease-dma.ts): an Fd it received, whose copy the map keeps.
    const fd = new Fd(openSync(held.file, 'r+'), RECEIVED);
    const R = P.VFIO_USER_F_DMA_REGION_READ;
    const map = client.dmaMap({ fd, offset: 0, iova: 0x10000, size: 0x1000, flags: R });
    await server.answer(P.VFIO_USER_DMA_MAP);
    await map;
    fd.close(); // ours: to the closer thread, which its held FLUSH then blocks
    await until('our close to reach the server', () => held.flushes() >= 1);
    const unmap = client.dmaUnmap({ iova: 0x10000, size: 0x1000 });
    await server.answer(P.VFIO_USER_DMA_UNMAP);
    await unmap;
    await until("the map's copy to be queued behind ours", () => native.closesPending() >= 2);
    assert.equal(held.answered(), 0, 'the unmap ended while the FLUSH was still held');
  } finally {
    held.release();
    close();
    await until('the closer thread to be done', () => native.closesPending() === 0);
    await held.unmount();
  }
});

test('a socket closed with a FUSE fd still queued in it does not wait for that fd: no FLUSH, and its RELEASE is not waited for', async () => {
  // As the broker's close of a connection whose client sent fds it never read (the hang-up path closes the
  // socket inline): the queued file's last reference goes with the message. The kernel sends FLUSH only from a
  // close(2) of an fd, and FUSE sends the RELEASE of a file's last reference without waiting for its answer.
  const held = await mountFlushFailingFs({ holdMs: 10_000 });
  try {
    const [a, b] = native.unixPair(true);
    const n = openSync(held.file, 'r');
    native.sendmsg(a, Buffer.from([1]), [n]);
    native.close(n); // ours: its FLUSH answered at once (EIO); the queued copy keeps the file open
    const flushes = held.flushes();
    assert.equal(held.releases(), 0, 'the file is still open, in the queue');
    held.holdRelease();
    native.close(a);
    native.close(b); // the last reference to the queued file: released with the message
    await until('the RELEASE to reach the server', () => held.releases() >= 1);
    assert.equal(held.flushes(), flushes, 'no FLUSH for the fd that was only queued');
    assert.equal(held.releasesAnswered(), 0, 'the socket closed while the RELEASE was still unanswered');
  } finally {
    held.release();
    await held.unmount();
  }
});
