// A slice's release count lost to an inotify queue overflow. Where slices are not revoked (here
// lifetime.revoke = false), a lease's resources go back to the pool only once the count of the slice's open
// descriptions is back to zero (slices.ts). The kernel keeps at most 16,384 events queued; past that it drops
// them and says IN_Q_OVERFLOW, which anyone opening the slice through /proc in a loop can cause. Before, the
// overflow was ignored: a lost IN_OPEN let a slice go back while still mapped, a lost IN_CLOSE held the lease
// in awaiting-release for good. Now the unit's count is marked lost, and its lease is quarantined at reclaim,
// saying why, rather than trusting the count.
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import type { Lease } from '../../src/broker/lease.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

test('an inotify overflow while a slice is out: its count is lost, and the lease is quarantined at reclaim, not released', {
  timeout: 60_000,
}, async () => {
  const rig = await startRig({ sim: { numQueues: 2 }, config: { lifetime: { revoke: false } } });
  const c = await ClientProc.spawn();
  try {
    await c.call('connect', { socket: rig.socket });
    const lease = rig.broker.leases.all().find((l) => l.live) as Lease;
    const units = [...lease.slices.values()].flat();
    assert.ok(units.length > 0 && units.every((u) => u.outstanding > 0), 'the client holds its slices');
    // Events pile up while the broker does not read them (as when it is busy), past the kernel's queue.
    rig.broker.leases.watcher.pause();
    const path = `/proc/self/fd/${units[0]!.deviceFd.fd}`;
    // Each open and close is two events: past the kernel's queue, whatever this host set it to.
    const queued = Number(readFileSync('/proc/sys/fs/inotify/max_queued_events', 'utf8'));
    for (let i = 0; i < queued / 2 + 100; i++) closeSync(openSync(path, 'r'));
    rig.broker.leases.watcher.resume();
    await until('the overflow to be read', () => units.every((u) => u.countLost));
    // Audited once per overflow read (every watch hears it), naming the leases whose counts it took.
    await until('the overflow to be audited', () => rig.audit.some((e) => e.event === 'slice-count-lost'));
    assert.deepEqual(
      rig.audit.filter((e) => e.event === 'slice-count-lost').map((e) => e.leases),
      [[lease.id]],
    );
    await c.exit();
    await until('the lease to be quarantined', () => lease.state === 'quarantined', 20_000);
    assert.match(lease.quarantineReason ?? '', /slice release count lost \(the inotify queue overflowed\)/);
  } finally {
    await rig.close();
  }
});
