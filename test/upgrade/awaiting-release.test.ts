// A lease awaiting the release of its slices travels through an upgrade
// (a device or config that cannot revoke slices: lifetime.revoke = false).
// A client keeps its queue page's slice fd after its session ended, so its
// lease parks 'awaiting-release'; the broker is upgraded; the client closes
// the fd; the NEW broker sees the release and frees the lease (audit
// 'released'), and holds no more descriptors than before the lease.
// The second case closes the fd inside the handover — after the old broker
// counted the slice's descriptions and before the new one rebuilt anything
// (the old broker stopped at 'mid-transfer') — a release the new broker sees
// only because the old broker's inotify queue travels with the state.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Fd } from '../../src/sys/fd.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { alive, fdKinds, stopped, total, UpgradeRig } from './rig.js';

after(trackFdLeaks());

const NO_REVOKE = '[lifetime]\nrevoke = false\n';

/** A lease whose session ended while this process keeps its queue page's slice fd: parked awaiting release. */
async function parkedLease(rig: UpgradeRig): Promise<{ id: string; slice: Fd }> {
  const before = new Set(((await rig.request({ op: 'leases' })) as { id: string }[]).map((l) => l.id));
  const client = await VfioUserClient.connect(rig.queueSocket);
  const qp = await client.regionInfo(2);
  assert.ok(qp.fd, 'the queue page comes with its slice fd');
  const leases = (await rig.request({ op: 'leases' })) as { id: string }[];
  const id = leases.find((l) => !before.has(l.id))!.id;
  await client.close();
  await until(
    'the lease to await its slice',
    () => state(rig, id).then((s) => s === 'awaiting-release'),
    60_000,
  );
  return { id, slice: qp.fd };
}

async function state(rig: UpgradeRig, id: string): Promise<string | null> {
  const leases = (await rig.request({ op: 'leases' })) as { id: string; state: string }[];
  return leases.find((l) => l.id === id)?.state ?? null;
}

/** Open and end one lease, so the broker made everything it keeps across leases (its slice watcher). */
async function warmUp(rig: UpgradeRig): Promise<void> {
  const { id, slice } = await parkedLease(rig);
  slice.close();
  await until('the warm-up lease to be released', async () => (await state(rig, id)) === null, 60_000);
}

/**
 * A broker's descriptors by kind, the fewest of ten readings 100 ms apart: the admin connection of the
 * request just made may still be open on the broker's side for a moment.
 */
async function quietFds(pid: number): Promise<Record<string, number>> {
  let best: Map<string, number> | null = null;
  for (let i = 0; i < 10; i++) {
    const now = fdKinds(pid);
    if (!best || total(now) < total(best)) best = now;
    await new Promise((r) => setTimeout(r, 100));
  }
  return Object.fromEntries([...best!].sort());
}

/**
 * The new broker released `id`: its audit 'released' comes after the 'upgrade-took-over' of the upgrade from
 * `old` (the new broker writes that as it starts serving; the old one writes to the same stdout, before).
 */
const releasedAfterTakeover = (rig: UpgradeRig, id: string, old: number) => {
  const events = rig.events();
  const took = events.findIndex((e) => e.event === 'upgrade-took-over' && e.from === old);
  return took >= 0 && events.slice(took + 1).some((e) => e.event === 'released' && e.lease === id);
};

test('a lease awaiting its slice is carried over; the new broker frees it when the client lets go', {
  timeout: 240_000,
}, async () => {
  const rig = await UpgradeRig.start({}, { config: NO_REVOKE });
  try {
    await warmUp(rig);
    const baseline = await quietFds(await rig.brokerPid());
    const { id, slice } = await parkedLease(rig);
    const old = await rig.brokerPid();
    const r = await rig.request({ op: 'upgrade' });
    assert.equal(r.upgraded, true, 'the upgrade is not refused for a parked lease');
    const pid = await rig.brokerPid();
    assert.notEqual(pid, old);
    await until('the old broker to exit', () => !alive(old), 30_000);
    assert.equal(await state(rig, id), 'awaiting-release', 'the new broker holds the lease, still awaiting');
    // Its queue stays out of the pool while the client may still write its queue page.
    const leases = (await rig.request({ op: 'leases' })) as { id: string; queue: number }[];
    const parkedQueue = leases.find((l) => l.id === id)!.queue;
    const other = await VfioUserClient.connect(rig.queueSocket);
    try {
      // VERSION is answered while the grant's device commands run: the lease is listed once they are done.
      let mine: { id: string; queue: number } | undefined;
      await until(
        'a new lease to be granted meanwhile',
        async () => {
          mine = ((await rig.request({ op: 'leases' })) as { id: string; queue: number }[]).find(
            (l) => l.id !== id,
          );
          return mine !== undefined;
        },
        10_000,
      );
      assert.ok(mine, 'a new lease is granted meanwhile');
      assert.notEqual(mine.queue, parkedQueue, 'not on the queue of the lease awaiting its slice');
    } finally {
      await other.close();
    }
    const mark = rig.events().length;
    slice.close();
    await until('the new broker to free the lease', async () => (await state(rig, id)) === null, 60_000);
    const ends = rig.events().slice(mark);
    assert.ok(
      ends.some((e) => e.event === 'released' && e.lease === id),
      `audit 'released' for ${id}: ${JSON.stringify(ends)}`,
    );
    assert.ok(releasedAfterTakeover(rig, id, old), `'released' for ${id} after the new broker took over`);
    assert.deepEqual(
      await quietFds(pid),
      baseline,
      'the new broker holds what the old one held before the lease (its slice fd and watch are gone)',
    );
    // Its queue went back to the pool: new leases work.
    await rig.addClient();
    await rig.progress(5);
    for (const s of await rig.stopClients()) assert.deepEqual(s.errors, []);
    rig.clients.length = 0;
  } finally {
    await rig.close();
  }
});

test('a slice released in the middle of the handover is seen by the new broker', {
  timeout: 240_000,
}, async () => {
  const rig = await UpgradeRig.start(
    { DEVLEASE_TEST_UPGRADE_OLD_STOP: 'mid-transfer' },
    { config: NO_REVOKE },
  );
  try {
    const { id, slice } = await parkedLease(rig);
    const old = rig.daemon.pid!;
    const asked = rig.request({ op: 'upgrade', deadlineMs: 60_000 }, 120_000);
    // Stopped after counting the slice's descriptions and sending the fds, before the new broker rebuilt.
    await until("the old broker to stop at 'mid-transfer'", () => stopped(old), 60_000);
    slice.close();
    rig.daemon.kill('SIGCONT'); // old is this child's: its handle, never the pid
    const r = await asked;
    assert.equal(r.upgraded, true);
    const pid = await rig.brokerPid();
    assert.notEqual(pid, old);
    await until('the new broker to free the lease', async () => (await state(rig, id)) === null, 60_000);
    assert.ok(
      releasedAfterTakeover(rig, id, old),
      `audit 'released' for ${id} after the new broker took over`,
    );
  } finally {
    await rig.close();
  }
});
