// An upgrade while a client's file holds the broker's closer thread: a FUSE file whose server never answers
// FLUSH. The broker closes a client's fds whose close may wait on its closer thread (native/close.cc), so the
// first such close waits there and the next fd stays queued, still open. Before the fix, the new broker
// inherited that queued fd across fork, and exec's close-on-exec closed it: a FLUSH to the same server, which
// the exec waited for, and the old broker with it (its one thread reads the exec's status in spawn()): no
// status request and no client was answered until the client's server let go (40 s and more here). Now the
// queued fds are left open across the exec, and the new broker closes them on its own closer thread.
import assert from 'node:assert/strict';
import { openSync, readdirSync, readlinkSync } from 'node:fs';
import { afterEach, beforeEach, test } from 'node:test';
import { native } from '../../src/sys/index.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { notifyReceiver } from '../helpers/notify-receiver.js';
import { sendAndHangUp } from '../helpers/unfinished-version.js';
import { until } from '../interop/helpers/peers.js';
import { UpgradeRig } from './rig.js';

/** Held FLUSH answers go out by themselves after this: past every deadline below, so a wrong wait shows. */
const HOLD_MS = 60_000;
let fuse: FlushFailingFs;

beforeEach(async () => {
  fuse = await mountFlushFailingFs({ hold: true, holdMs: HOLD_MS });
});
afterEach(async () => {
  fuse.release();
  await fuse.unmount();
});

/** How many open fds of `pid` are the FUSE file. */
function fuseFds(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) === fuse.file) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

test("an upgrade while the broker's closer thread waits on a client's FUSE server: the old broker answers meanwhile, the upgrade completes, and the new broker closes what was queued", {
  timeout: 180_000,
}, async () => {
  const rig = await UpgradeRig.start();
  // Ours: never closed on this thread while FLUSH is held (this process's closer thread takes it).
  const file = openSync(fuse.file, 'r');
  try {
    const oldPid = await rig.brokerPid();
    sendAndHangUp(rig.queueSocket, [file]);
    await until('the broker to close it (its FLUSH held)', () => fuse.flushes() >= 1, 10_000);
    sendAndHangUp(rig.queueSocket, [file]);
    await until('the second to wait behind it, open', () => fuseFds(oldPid) === 1, 10_000);
    const t0 = Date.now();
    // Asked while the upgrade runs: the old broker answers (its thread is not held by the exec).
    const statusDuring = (async () => {
      await new Promise((r) => setTimeout(r, 50));
      await rig.request({ op: 'status' }, 10_000);
      return Date.now() - t0;
    })();
    const out = (await rig.request({ op: 'upgrade', deadlineMs: 20_000 }, 30_000)) as { pid: number };
    const tookMs = Date.now() - t0;
    assert.notEqual(out.pid, oldPid, 'a new broker serves');
    assert.ok(tookMs < HOLD_MS / 3, `the upgrade did not wait for the held FLUSH (${tookMs} ms)`);
    assert.ok((await statusDuring) < HOLD_MS / 3, 'the old broker answered meanwhile');
    // The new broker was handed the queued fd open and closed it as it started, on its own closer thread: its
    // FLUSH (held too) sent by the new broker itself — not one from the old broker (whose exit closes what it
    // still holds), and not none (a broker never handed the fd has none of it in its table either) — and the fd
    // gone from its table.
    await until(
      'a FLUSH from the new broker (the fd it was handed, closed)',
      () => fuse.flushSenders().includes(out.pid),
      10_000,
    );
    await until('the new broker to close the fd it was handed', () => fuseFds(out.pid) === 0, 10_000);
  } finally {
    fuse.release();
    native.closeReceived(file);
    await rig.close();
  }
});

// Under systemd (NOTIFY_SOCKET set) the new broker tells systemd its pid as it takes over. It used to run
// `systemd-notify` for that: a child that inherits the fds the new broker was handed still queued behind a held
// close, and closes them as it execs and exits — a FLUSH to the client's server, which the child waited for and
// the new broker with it (spawnSync), before it served anyone. Now the message is one datagram, sent directly.
test('under systemd, the new broker tells MAINPID= and serves while the fds it was handed wait behind a held close', {
  timeout: 180_000,
}, async () => {
  const notify = await notifyReceiver();
  const rig = await UpgradeRig.start({ NOTIFY_SOCKET: notify.address });
  const file = openSync(fuse.file, 'r');
  try {
    const oldPid = await rig.brokerPid();
    sendAndHangUp(rig.queueSocket, [file]);
    await until('the broker to close it (its FLUSH held)', () => fuse.flushes() >= 1, 10_000);
    // Two more wait, open: the new broker is handed both, its closer thread waits on the first, the second
    // stays in its table while it starts.
    sendAndHangUp(rig.queueSocket, [file, file]);
    await until('two to wait behind it, open', () => fuseFds(oldPid) === 2, 10_000);
    const t0 = Date.now();
    const out = (await rig.request({ op: 'upgrade', deadlineMs: 20_000 }, 30_000)) as { pid: number };
    assert.notEqual(out.pid, oldPid, 'a new broker serves');
    await until(
      'systemd to be told the new main pid',
      () => notify.messages.includes(`MAINPID=${out.pid}`),
      10_000,
    );
    const status = (await rig.request({ op: 'status' }, 10_000)) as { pid: number };
    assert.equal(status.pid, out.pid, 'the new broker answers');
    assert.ok(
      Date.now() - t0 < HOLD_MS / 3,
      `the new broker served before the held FLUSH ended (${Date.now() - t0} ms)`,
    );
    await until(
      'the new broker to close the first fd it was handed (its FLUSH sent by the new broker)',
      () => fuse.flushSenders().includes(out.pid),
      10_000,
    );
    await until('the second to wait behind it in its table', () => fuseFds(out.pid) === 1, 10_000);
  } finally {
    fuse.release();
    native.closeReceived(file);
    await rig.close();
    notify.close();
  }
});
