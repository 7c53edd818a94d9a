// The broker's slice watcher owns one lazily made inotify: a slice unit
// disposed after the watcher closed (a reclaim finishing during broker
// shutdown) must not make a new one — that was an inotify fd leaked per
// broker, seen under load in the device-restart and hardening tests.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SliceUnit, SliceWatcher } from '../../src/broker/slices.js';
import { MemFd } from '../../src/sys/index.js';
import { assertNoFdLeak } from '../helpers/fds.js';

test('a unit disposed after the watcher closed leaves no inotify behind; watch() after close is refused', async () => {
  await assertNoFdLeak(async () => {
    const watcher = new SliceWatcher();
    const mem = MemFd.create('slice', { size: 4096 });
    const unit = new SliceUnit(mem.fd.dup());
    mem.close();
    unit.handOut(watcher).close(); // makes the inotify and a watch
    watcher.close();
    unit.dispose(watcher); // unwatch after close
    const late = new SliceUnit(MemFd.create('late', { size: 4096 }).fd);
    assert.throws(() => late.handOut(watcher), { code: 'ERR_DEVLEASE_CLOSED' });
    late.dispose(watcher);
    watcher.close();
  });
});
