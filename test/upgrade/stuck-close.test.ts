// An upgrade while a client's file holds the broker's closer thread: a FUSE file whose server never answers
// FLUSH. The broker closes a client's fds whose close may wait on its closer thread (native/close.cc), so the
// first such close waits there and the next fd stays queued, still open. Before the fix, the new broker
// inherited that queued fd across fork, and exec's close-on-exec closed it: a FLUSH to the same server, which
// the exec waited for, and the old broker with it (its one thread reads the exec's status in spawn()): no
// status request and no client was answered until the client's server let go (40 s and more here). Now the
// queued fds are left open across the exec, and the new broker closes them on its own closer thread.
import assert from 'node:assert/strict';
import { openSync, readdirSync, readlinkSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { native } from '../../src/sys/index.js';
import { type FlushFailingFs, mountFlushFailingFs } from '../fixtures/sys/fuse-flush-eio.js';
import { sendAndHangUp } from '../helpers/unfinished-version.js';
import { until } from '../interop/helpers/peers.js';
import { UpgradeRig } from './rig.js';

/** Held FLUSH answers go out by themselves after this: past every deadline below, so a wrong wait shows. */
const HOLD_MS = 60_000;
let fuse: FlushFailingFs;

before(async () => {
  fuse = await mountFlushFailingFs({ hold: true, holdMs: HOLD_MS });
});
after(async () => {
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
    // The new broker was handed the queued fd open and closed it as it started, on its own closer thread: gone
    // from its table, and its FLUSH (held too) sent.
    await until('the new broker to close the fd it was handed', () => fuseFds(out.pid) === 0, 10_000);
    await until('its FLUSH', () => fuse.flushes() >= 2, 10_000);
  } finally {
    fuse.release();
    native.closeReceived(file);
    await rig.close();
  }
});
