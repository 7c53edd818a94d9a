// The closer thread's queue counts each received fd against the uid that sent it (native/close.cc), so a user
// who holds a close up (a FUSE server not answering FLUSH) is refused once its own share is queued, not everyone.
// Here the pieces, against a real held FLUSH: recvInto refuses an untrusted peer whose uid has its share and
// takes another uid's fds (or a peer's of unknown uid, or a trusted one's); the uid goes with an Fd from the
// socket it came on through dup(), relayed copies and closeSoon() to the close that queues it; and the counts
// return to 0 as the queue drains.
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { after, test } from 'node:test';
import { closeSoon, Fd, RECEIVED, receivedCopy, receivedFrom } from '../../src/sys/fd.js';
import { native, StreamSocket } from '../../src/sys/index.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { until } from '../helpers/broker-rig.js';
import { openFdCount, trackFdLeaks } from '../helpers/fds.js';
import { collect, frame, framing, tick } from '../helpers/stream-frames.js';

after(trackFdLeaks());

const R = native.recvIntoFds;
const HOG = 1234;
const OTHER = 4321;

/** Runs `fn` with the closer thread blocked in a held FLUSH; then lets it go and waits for the queue to drain. */
async function withHeldCloser(fn: (devNull: number) => Promise<void>): Promise<void> {
  const held: FlushFailingFs = await mountFlushFailingFs({ hold: true, holdMs: 60_000 });
  const devNull = openSync('/dev/null', 'r');
  try {
    native.closeReceived(openSync(held.file, 'r'));
    await until('the held FLUSH', () => held.flushes() >= 1);
    await fn(devNull);
  } finally {
    held.release();
    closeSync(devNull);
    await until('the queue to drain', () => native.closesPending() === 0, 30_000);
    await held.unmount();
  }
}

/** Sends one byte with `fd` over a fresh socketpair and reads it with recvInto(untrusted, peerUid). */
function receive(fd: number, untrusted: boolean, peerUid?: number): { taken: number[]; dropped: boolean } {
  const [a, b] = native.unixPair(true);
  try {
    native.sendmsg(a, Buffer.from('x'), [fd]);
    assert.equal(native.recvInto(b, Buffer.alloc(1), 0, 1, 8, untrusted, peerUid), 1);
    const taken = Array.from({ length: R[0]! }, (_, i) => R[i + 2]!);
    return { taken, dropped: R[1] === 2 };
  } finally {
    native.close(a);
    native.close(b);
  }
}

test('recvInto refuses an untrusted peer whose uid has its share queued, and takes other fds', async () => {
  await withHeldCloser(async (devNull) => {
    const share = native.closesQueueLimitPerUid;
    assert.ok(share > 0 && share < native.closesQueueLimit, `a share (${share}) below the global bound`);
    // Below the share nothing is refused (the fast path: no uid can have its share yet).
    for (let i = 0; i < share - 1; i++) native.closeReceived(native.dup(devNull), HOG);
    const below = receive(devNull, true, HOG);
    assert.deepEqual([below.taken.length, below.dropped], [1, false]);
    native.closeReceived(below.taken[0]!, HOG);
    assert.equal(native.closesQueuedFrom(HOG), share);

    const fds = openFdCount();
    const refused = receive(devNull, true, HOG);
    assert.deepEqual(refused, { taken: [], dropped: true }, 'the share is full: dropped unopened');
    assert.equal(openFdCount(), fds, 'no fd was installed');
    // Another uid, a peer whose uid is not known (the global bound alone), a trusted peer: taken.
    for (const [untrusted, uid] of [
      [true, OTHER],
      [true, undefined],
      [true, -1],
      [false, HOG],
    ] as const) {
      const r = receive(devNull, untrusted, uid);
      assert.deepEqual([r.taken.length, r.dropped], [1, false], `untrusted ${untrusted}, uid ${uid}`);
      native.close(r.taken[0]!);
    }
    native.closeReceived(native.dup(devNull), OTHER);
    assert.equal(native.closesQueuedFrom(OTHER), 1);
    assert.equal(native.closesQueuedFrom(HOG), share, 'counted apart');
    // A bad uid is misuse, thrown before anything is read or closed.
    assert.throws(() => native.recvInto(0, Buffer.alloc(1), 0, 1, 8, true, 2 ** 32 - 1), {
      code: 'ERR_DEVLEASE_INVALID_ARG',
    });
    assert.throws(() => native.closesQueuedFrom(-1), { code: 'ERR_DEVLEASE_INVALID_ARG' });
  });
  assert.equal(native.closesQueuedFrom(HOG), 0, 'the counts return to 0 as the queue drains');
  assert.equal(native.closesQueuedFrom(OTHER), 0);
});

test("an Fd read from an untrusted peer's socket carries its uid through dups, relayed copies and closeSoon", async () => {
  await withHeldCloser(async (devNull) => {
    const uid = process.getuid!();
    for (const untrustedPeer of [true, false]) {
      const [x, y] = native.unixPair(true);
      const sock = new StreamSocket(new Fd(x), { framing, untrustedPeer });
      const { got } = collect(sock);
      try {
        native.sendmsg(y, frame('fd'), [devNull]);
        await until('the message', () => got.length === 1);
        const fd = got[0]!.fds[0]!;
        assert.equal(fd.received, true);
        assert.equal(fd.senderUid, untrustedPeer ? uid : null, `untrustedPeer ${untrustedPeer}`);
        fd.close();
      } finally {
        sock.close();
        native.close(y);
      }
    }
    assert.equal(native.closesQueuedFrom(uid), 1, "the untrusted peer's, counted against its uid");
    const pending = native.closesPending();
    const base = new Fd(native.dup(devNull), receivedFrom(HOG));
    const dup = base.dup();
    assert.equal(dup.senderUid, HOG);
    dup.close();
    receivedCopy(base).close();
    closeSoon([base.dup()]);
    await tick();
    base.close();
    assert.equal(native.closesQueuedFrom(HOG), 4);
    const bare = receivedCopy(devNull);
    assert.equal(bare.senderUid, null, 'a bare number: no sender known');
    bare.close();
    new Fd(native.dup(devNull), RECEIVED).close();
    assert.equal(native.closesQueuedFrom(HOG), 4, 'no sender: counted globally only');
    assert.equal(native.closesPending(), pending + 6);
  });
});
