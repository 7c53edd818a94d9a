// The closer thread's queue is bounded. A client that holds one FLUSH of a FUSE file it serves blocks the
// closer thread (native/close.cc), and every received fd whose close may wait (a FUSE file, a device node)
// then queues behind it, still open. Before the bound, a client could go on sending such fds — 16 a message,
// reconnecting as it likes — until the broker's fd table was full and it refused everyone. Now, with
// native.closesQueueLimit of them queued, a client's message that carries fds cuts that client off and the
// kernel drops its fds unopened; clients that send no fds, and the broker's own device link, carry on.
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { after, test } from 'node:test';
import { native } from '../../src/sys/index.js';
import { mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { sendAndHangUp, unfinishedVersion } from '../helpers/unfinished-version.js';

after(trackFdLeaks());

const PER_MESSAGE = 16;

test('with the closer thread held and its queue full, a client sending fds is cut off and its fds are never opened; the queue drains once the close returns', {
  timeout: 120_000,
}, async () => {
  const held = await mountFlushFailingFs({ hold: true, holdMs: 60_000 });
  const rig = await startRig();
  // Started first: a child exec'd while the closer thread holds fds would wait at exec for their FLUSH.
  const c = await ClientProc.spawn();
  const devNull = openSync('/dev/null', 'r');
  try {
    // The closer thread blocks in this close (the broker is this process).
    native.closeReceived(openSync(held.file, 'r'));
    await until('the held FLUSH', () => held.flushes() >= 1);
    const limit = native.closesQueueLimit;
    const fds = Array.from({ length: PER_MESSAGE }, () => devNull);
    while (native.closesPending() <= limit) {
      const before = native.closesPending();
      sendAndHangUp(rig.socket, fds);
      await until('the broker to queue their closes', () => native.closesPending() >= before + PER_MESSAGE);
    }
    const pending = native.closesPending();
    assert.ok(pending <= limit + PER_MESSAGE + 1, `the queue stopped at its limit (${pending})`);

    // One more client with fds: cut off, none of them taken.
    const sock = native.unixConnect(rig.socket, true);
    try {
      native.sendmsg(sock, unfinishedVersion(2), fds);
      await until('the broker to cut the client off', () => {
        try {
          return native.recvmsg(sock, 4096)?.eof === true;
        } catch {
          return true; // ECONNRESET: cut off too
        }
      });
    } finally {
      native.close(sock);
    }
    assert.equal(native.closesPending(), pending, 'no fd of its was taken');
    // The device link is no client: the broker still reads the device.
    assert.equal(typeof (await rig.broker.device.read32(0, 0)), 'number');

    held.release();
    await until('the queue to drain', () => native.closesPending() === 0, 30_000);
    // Fds are taken again: a lease, its eventfds sent with SET_IRQS.
    const { info } = await c.call<{ info: { lease: string } }>('connect', { socket: rig.socket });
    assert.equal(typeof info.lease, 'string');
  } finally {
    held.release();
    closeSync(devNull);
    await c.exit();
    await rig.close();
    await until('the closer thread to be done', () => native.closesPending() === 0, 30_000);
    await held.unmount();
  }
});
