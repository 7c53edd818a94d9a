// A slice release count lost to an inotify overflow travels with an upgrade (a device or config that cannot
// revoke slices: lifetime.revoke = false). The old broker marks the count lost (slices.ts) and audits
// 'slice-count-lost'; the new broker must not trust the count either. Before, it adopted only the number, so the
// lease was released when the client let go, and its slice could go to the next client while a holder the lost
// events hid still mapped it. Now the unit carries `countLost` (state version 6) and the new broker quarantines
// the lease at reclaim, as the old one would have. A new broker that reads only versions 1 to 5 is refused.
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import type { Fd } from '../../src/sys/fd.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { alive, UpgradeRig } from './rig.js';

after(trackFdLeaks());

const NO_REVOKE = '[lifetime]\nrevoke = false\n';

type Listed = { id: string; state: string; quarantineReason: string | null };

/** The states of a lease that has not ended yet (LeaseState, src/broker/lease.ts). */
const IN_PROGRESS = new Set(['active', 'revoking', 'reclaiming', 'awaiting-release']);

/** A live lease with its queue page's slice fd, and the broker's count of that slice lost to an overflow. */
async function leaseWithLostCount(
  rig: UpgradeRig,
): Promise<{ id: string; client: VfioUserClient; slice: Fd }> {
  const client = await VfioUserClient.connect(rig.queueSocket);
  const qp = await client.regionInfo(2);
  assert.ok(qp.fd, 'the queue page comes with its slice fd');
  let id = '';
  await until('the lease to be listed', async () => {
    id = ((await rig.request({ op: 'leases' })) as Listed[])[0]?.id ?? '';
    return id !== '';
  });
  // Events pile up while the broker is stopped, past the kernel's queue: each open and close of the slice's
  // inode by path is two of them.
  using broker = await rig.brokerPidfd(); // not its pid: see helpers/pidfd.ts
  const queued = Number(readFileSync('/proc/sys/fs/inotify/max_queued_events', 'utf8'));
  broker.sendSignal('SIGSTOP');
  try {
    for (let i = 0; i < queued / 2 + 100; i++) closeSync(openSync(`/proc/self/fd/${qp.fd.fd}`, 'r'));
  } finally {
    broker.sendSignal('SIGCONT');
  }
  await until('the broker to audit the lost count', () =>
    rig.events().some((e) => e.event === 'slice-count-lost' && (e.leases as string[]).includes(id)),
  );
  return { id, client, slice: qp.fd };
}

test('a lost slice count is carried over: the new broker quarantines the lease when the client lets go', {
  timeout: 240_000,
}, async () => {
  const rig = await UpgradeRig.start({}, { config: NO_REVOKE });
  try {
    const { id, client, slice } = await leaseWithLostCount(rig);
    const old = await rig.brokerPid();
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true);
    await until('the old broker to exit', () => !alive(old), 30_000);
    await client.close();
    slice.close();
    let lease: Listed | undefined;
    await until(
      'the new broker to end the lease',
      async () => {
        lease = ((await rig.request({ op: 'leases' })) as Listed[]).find((l) => l.id === id);
        // Gone from the list, or in an end state (LeaseState, src/broker/lease.ts): not one still on its way.
        return lease === undefined || !IN_PROGRESS.has(lease.state);
      },
      60_000,
    );
    assert.equal(
      lease?.state,
      'quarantined',
      `the lease is quarantined, not released: ${JSON.stringify(lease)}`,
    );
    assert.match(lease?.quarantineReason ?? '', /slice release count lost \(the inotify queue overflowed\)/);
  } finally {
    await rig.close();
  }
});

test('a new broker that reads only state versions 1 to 5 is refused while a slice count is lost', {
  timeout: 240_000,
}, async () => {
  const rig = await UpgradeRig.start({ DEVLEASE_TEST_UPGRADE_MISBEHAVE: 'v5-reader' }, { config: NO_REVOKE });
  try {
    const { client, slice } = await leaseWithLostCount(rig);
    const pid = await rig.brokerPid();
    await assert.rejects(rig.request({ op: 'upgrade' }, 120_000), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EAGAIN');
      assert.match(err.message, /does not read state version 6 \(it reads \[1,2,3,4,5\]\)/);
      return true;
    });
    assert.equal(await rig.brokerPid(), pid, 'the old broker carries on');
    await client.close();
    slice.close();
  } finally {
    await rig.close();
  }
});
