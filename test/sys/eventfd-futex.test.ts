// Acceptance: eventfd works across processes; a futex wake reaches a waiter
// in another process.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { EventFd, futexWait, futexWake, MemFd, native } from '../../src/sys/index.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { Peer } from '../helpers/sys-peer.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('eventfd signals travel both ways between processes', async () => {
  const peer = await Peer.spawn();
  using toPeer = new EventFd();
  using fromPeer = new EventFd();
  try {
    const took = await peer.call('take', {}, [toPeer.fd, fromPeer.fd]);
    const [theirs, ours] = took.indices as number[];
    await peer.call('eventfdWatch', { fd: theirs });

    // The peer drains the counter on each readiness: one or two events add up to 7.
    let total = 0n;
    const reachedSeven = new Promise<void>((resolve) => {
      peer.on('event', (body: { event: string; value: string }) => {
        assert.equal(body.event, 'eventfd');
        total += BigInt(body.value);
        if (total >= 7n) resolve();
      });
    });
    toPeer.write(5n);
    toPeer.write(2);
    await within(reachedSeven, 'the peer to see 7');
    assert.equal(total, 7n);

    const seen = new Promise<bigint>((resolve) => fromPeer.onReadable(resolve));
    await peer.call('eventfdWrite', { fd: ours, value: '3' });
    assert.equal(await within(seen, "the peer's write to be seen"), 3n);
    fromPeer.stopWatching();
    assert.equal(fromPeer.read(), null, 'drained by onReadable');
  } finally {
    await peer.stop();
  }
});

test('semaphore eventfd: read() takes one at a time, onReadable reports the count', async () => {
  using efd = new EventFd({ initval: 2, semaphore: true });
  assert.equal(efd.read(), 1n);
  assert.equal(efd.read(), 1n);
  assert.equal(efd.read(), null);
  efd.write(3);
  assert.equal(await within(new Promise<bigint>((resolve) => efd.onReadable(resolve)), 'readiness'), 3n);
});

test('futexWake in this process wakes a futexWait in another process', async () => {
  using memfd = MemFd.create('futex', { size: 4096 });
  using mine = memfd.map();
  const peer = await Peer.spawn();
  let woken = 0;
  try {
    using shared = memfd.reopen();
    const took = await peer.call('take', {}, [shared]);
    const fd = (took.indices as number[])[0];
    const { mapping } = await peer.call('map', { fd, length: 4096, guard: false });
    // The word stays 0, so the waiter can only return 'ok' by being woken.
    const waited = peer.call('futexWait', { mapping, word: 1, expected: 0, timeoutMs: -1 });
    waited.catch(() => {}); // rejected by the kill below when the test failed first: that failure is the one to see
    // Woken once the peer is in futexWait: until then a wake finds no waiter (0).
    await until('a futexWake to find the waiter in the other process', () => {
      woken = futexWake(mine.buffer, 1);
      return woken > 0;
    });
    assert.equal(woken, 1);
    assert.equal((await within(waited, 'the waiter to return')).result, 'ok');
  } finally {
    // A waiter never woken would hold the peer, and its 'exit' request, for good.
    if (woken === 0) peer.child.kill('SIGKILL');
    await peer.stop();
  }
});

test('futexWait answers not-equal and timed-out', () => {
  const sab = new SharedArrayBuffer(8);
  new Int32Array(sab)[1] = 3;
  assert.equal(futexWait(sab, 1, 4), 'not-equal');
  assert.equal(futexWait(sab, 1, 3, 1), 'timed-out');
  assert.equal(futexWake(sab, 1), 0);
  assert.throws(() => futexWait(sab, 2, 0, 0), { code: 'ERR_DEVLEASE_INVALID_ARG' });
  assert.throws(() => futexWake(new ArrayBuffer(8) as unknown as SharedArrayBuffer, 0), {
    code: 'ERR_DEVLEASE_INVALID_ARG',
  });
});

test('eventfdKick (a doorbell kick) adds 1 to the counter; a saturated counter is reported, a bad fd refused', () => {
  using efd = new EventFd();
  assert.equal(native.eventfdKick(efd.fd.fd), true);
  assert.equal(native.eventfdKick(efd.fd.fd), true);
  assert.equal(efd.read(), 2n);
  efd.write(0xffff_ffff_ffff_fffen); // the largest value an eventfd holds
  assert.equal(native.eventfdKick(efd.fd.fd), false, 'EAGAIN: a wake-up is pending anyway');
  assert.equal(efd.read(), 0xffff_ffff_ffff_fffen);
  assert.throws(() => native.eventfdKick(-1), { code: 'ERR_DEVLEASE_INVALID_ARG' });
});

test('a stopped watch calls back no more, and its fd can be watched again at once', async () => {
  using efd = new EventFd();
  let stale = 0;
  efd.onReadable(() => stale++);
  efd.write(1n);
  // Stopped before the loop has looked at it (the fd leaves epoll and the watch is closed in this call, no
  // separate stop first): the same fd is watched again in the same tick, and only the new callback hears.
  efd.stopWatching();
  const seen = await new Promise<bigint>((resolve) => efd.onReadable(resolve));
  assert.equal(seen, 1n);
  await new Promise((r) => setImmediate(r));
  assert.equal(stale, 0, 'the stopped watch called back');
});
