// The closer thread's queue is bounded, per uid and in all. A client that holds one FLUSH of a FUSE file it
// serves blocks the closer thread (native/close.cc), and every received fd whose close may wait (a FUSE file, a
// device node) then queues behind it, still open. Before the bound, a client could go on sending such fds — 16 a
// message, reconnecting as it likes — until the broker's fd table was full and it refused everyone. With the
// global bound alone (native.closesQueueLimit), that one client made the broker refuse every client's fds. Now
// each queued fd counts against the uid that sent it (SO_PEERCRED of its socket): a client whose uid has
// native.closesQueueLimitPerUid queued is cut off by a message that carries fds, the kernel dropping them
// unopened, while clients of other uids still have theirs taken; the global bound stays as the backstop, which
// several uids together can reach. Clients that send no fds, and the broker's own device link, carry on.
// The clients are child processes run as other uids (the tests run as root), sending /dev/null: a device
// node, whose close goes to the closer thread.
import assert from 'node:assert/strict';
import { chmodSync, closeSync, openSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/sys/index.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { sendAndHangUp, unfinishedVersion } from '../helpers/unfinished-version.js';

after(trackFdLeaks());

const FD_SENDER = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'broker', 'fd-sender.js');
const PER_MESSAGE = 16;
const A = { uid: 65534, gid: 65534 };
const B = { uid: 65533, gid: 65533 };
const C = { uid: 65532, gid: 65532 };
const E = { uid: 65531, gid: 65531 };

/** A FUSE file whose FLUSH is held, a broker in this process, and its lease socket reachable by other uids. */
async function heldRig(): Promise<{ held: FlushFailingFs; rig: Rig }> {
  const held = await mountFlushFailingFs({ hold: true, holdMs: 60_000 });
  try {
    // No VERSION deadline while a probe waits (5 s by default): a cut-off within it is the backlog's.
    const rig = await startRig({ config: { sockets: { version_timeout_ms: 60_000 } } });
    // The rig's folder is 0700 (mkdtemp): let other uids reach the 0666 lease socket, as in /run/devlease.
    chmodSync(rig.dir, 0o755);
    return { held, rig };
  } catch (err) {
    await held.unmount();
    throw err;
  }
}

/** The closer thread blocks in this close (the broker is this process); whose it is, is not known. */
async function holdTheCloser(held: FlushFailingFs): Promise<void> {
  native.closeReceived(openSync(held.file, 'r'));
  await until('the held FLUSH', () => held.flushes() >= 1);
}

/** `send()`s one message of PER_MESSAGE fds at a time, each queued before the next, until `uid` has its share. */
async function fillShare(uid: number, send: () => unknown): Promise<void> {
  const share = native.closesQueueLimitPerUid;
  while (native.closesQueuedFrom(uid) < share) {
    const before = native.closesQueuedFrom(uid);
    await send();
    await until(`uid ${uid}'s fds to be queued`, () => native.closesQueuedFrom(uid) >= before + PER_MESSAGE);
  }
  const queued = native.closesQueuedFrom(uid);
  assert.ok(queued < share + PER_MESSAGE, `uid ${uid} stopped at its share (${queued})`);
}

/** A message with fds from this process (uid 0), on a connection kept open: whether the broker cut it off. */
async function cutOffHere(socket: string, fds: number[]): Promise<boolean> {
  const sock = native.unixConnect(socket, true);
  try {
    native.sendmsg(sock, unfinishedVersion(2), fds);
    await until('the broker to cut the client off', () => {
      try {
        return native.recvmsg(sock, 4096)?.eof === true;
      } catch {
        return true; // ECONNRESET: cut off too
      }
    });
    return true;
  } finally {
    native.close(sock);
  }
}

const sender = (as: { uid: number; gid: number }) => ClientProc.spawn(as, FD_SENDER);

async function probe(c: ClientProc, rig: Rig, waitMs: number): Promise<boolean> {
  const r = await c.call<{ cutOff: boolean }>('probe', { socket: rig.socket, count: PER_MESSAGE, waitMs });
  return r.cutOff;
}

test('a uid holding the closer is cut off once its share is queued; another uid still has its fds taken', {
  timeout: 120_000,
}, async () => {
  const { held, rig } = await heldRig();
  // Started first: a child exec'd while the closer thread holds fds would wait at exec for their FLUSH.
  const a = await sender(A);
  const b = await sender(B);
  const leaseB = await ClientProc.spawn(B);
  const leaseA = await ClientProc.spawn(A);
  const devNull = openSync('/dev/null', 'r');
  try {
    await holdTheCloser(held);
    await fillShare(A.uid, () => a.call('send', { socket: rig.socket, count: PER_MESSAGE }));
    const pending = native.closesPending();
    assert.ok(pending < native.closesQueueLimit, 'the global bound is far away');

    // A's next message with fds: cut off, none of them taken.
    assert.equal(await probe(a, rig, 5000), true, 'uid A is cut off');
    assert.equal(native.closesQueuedFrom(A.uid), native.closesQueueLimitPerUid, 'no fd of its was taken');
    assert.equal(native.closesPending(), pending);

    // B's fds of the same kind are taken (and queue behind the same close, counted against B) ...
    await b.call('send', { socket: rig.socket, count: PER_MESSAGE });
    await until('uid B to have its fds queued', () => native.closesQueuedFrom(B.uid) === PER_MESSAGE);
    // ... and so are the eventfds of its lease (SET_IRQS), and root's.
    const { info } = await leaseB.call<{ info: { lease: string } }>('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
    sendAndHangUp(
      rig.socket,
      Array.from({ length: PER_MESSAGE }, () => devNull),
    );
    await until('root to have its fds queued', () => native.closesQueuedFrom(0) === PER_MESSAGE);
    assert.equal(native.closesQueuedFrom(A.uid), native.closesQueueLimitPerUid, 'A still at its share');

    held.release();
    await until('the queue to drain', () => native.closesPending() === 0, 30_000);
    for (const uid of [A.uid, B.uid, 0]) assert.equal(native.closesQueuedFrom(uid), 0, `uid ${uid}'s count`);
    // A has its fds taken again: a lease, its eventfds sent with SET_IRQS.
    const again = await leaseA.call<{ info: { lease: string } }>('connect', { socket: rig.socket });
    assert.equal(typeof again.info.lease, 'string');
  } finally {
    held.release();
    closeSync(devNull);
    for (const c of [a, b, leaseA, leaseB]) await c.exit();
    await rig.close();
    await until('the closer thread to be done', () => native.closesPending() === 0, 30_000);
    await held.unmount();
  }
});

test('with the closer thread held and its queue filled by several uids, every client sending fds is cut off and its fds are never opened; the queue drains once the close returns', {
  timeout: 120_000,
}, async () => {
  const { held, rig } = await heldRig();
  const fillers = [await sender(A), await sender(B), await sender(C)];
  const e = await sender(E);
  const leaseE = await ClientProc.spawn(E);
  const devNull = openSync('/dev/null', 'r');
  const fds = Array.from({ length: PER_MESSAGE }, () => devNull);
  try {
    await holdTheCloser(held);
    const limit = native.closesQueueLimit;
    const uids = [A.uid, B.uid, C.uid];
    for (const [i, c] of fillers.entries())
      await fillShare(uids[i]!, () => c.call('send', { socket: rig.socket, count: PER_MESSAGE }));
    // Root's share: the fourth, which fills the queue (a quarter each).
    await fillShare(0, () => sendAndHangUp(rig.socket, fds));
    const pending = native.closesPending();
    assert.ok(pending > limit, `the queue is full (${pending})`);
    assert.ok(pending <= limit + 4 * PER_MESSAGE + 1, `the queue stopped at its limit (${pending})`);

    // A uid with nothing queued is cut off all the same (the global bound), as is root; none of their fds taken.
    assert.equal(await probe(e, rig, 5000), true, 'uid E is cut off');
    assert.equal(await cutOffHere(rig.socket, fds), true, 'root is cut off');
    assert.equal(native.closesQueuedFrom(E.uid), 0);
    assert.equal(native.closesPending(), pending, 'no fd of theirs was taken');
    // The device link is no client: the broker still reads the device.
    assert.equal(typeof (await rig.broker.device.read32(0, 0)), 'number');

    held.release();
    await until('the queue to drain', () => native.closesPending() === 0, 30_000);
    for (const uid of [...uids, 0]) assert.equal(native.closesQueuedFrom(uid), 0, `uid ${uid}'s count`);
    // Fds are taken again: a lease, its eventfds sent with SET_IRQS.
    const { info } = await leaseE.call<{ info: { lease: string } }>('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
  } finally {
    held.release();
    closeSync(devNull);
    for (const c of [...fillers, e, leaseE]) await c.exit();
    await rig.close();
    await until('the closer thread to be done', () => native.closesPending() === 0, 30_000);
    await held.unmount();
  }
});
