// Slice fds prepared at reclaim (issue 16): a reclaim asks the device for the queue page's fresh slice fd, so
// the next grant of that queue asks for none. The broker holds at most lifetime.prepared_slice_fds of them,
// grants the most recently prepared queue first (so they are used), and keeps none for a lease it quarantines.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { VFIO_DEVICE_FEATURE_DMA_BUF } from '../../src/vfio/uapi/vfio.js';
import { ClientProc, type Rig, startRig, until } from '../helpers/broker-rig.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** The simulator's queue-page memory as this (the broker's) process holds it: one memfd per slice fd. */
const queuePageFds = () => [...openFds().values()].filter((t) => t.startsWith('/memfd:sa1-queue-')).length;

type FeatureReply = Awaited<ReturnType<Rig['device']['client']['feature']>>;

/**
 * Count the slice-fd requests the broker's device connection sends from now on; `replies` are their answers
 * as they come (settled before the broker's own handling of each runs: it awaits the same promise after us).
 */
function countSliceRequests(rig: Rig): (() => number) & { replies: Promise<FeatureReply>[] } {
  const client = rig.device.client;
  const feature = client.feature.bind(client);
  const replies: Promise<FeatureReply>[] = [];
  client.feature = (f, opts) => {
    const reply = feature(f, opts);
    if (f.feature === VFIO_DEVICE_FEATURE_DMA_BUF) replies.push(reply);
    return reply;
  };
  return Object.assign(() => replies.length, { replies });
}

async function withRig(
  cap: number,
  numQueues: number,
  fn: (rig: Rig, clients: ClientProc[]) => Promise<void>,
) {
  const rig = await startRig({ sim: { numQueues }, config: { lifetime: { prepared_slice_fds: cap } } });
  const clients: ClientProc[] = [];
  try {
    await fn(rig, clients);
  } finally {
    await Promise.all(clients.map((c) => c.kill()));
    await rig.close();
  }
}

/** `n` leases, one after the other, each its own client process (with its queue). */
async function lease(
  rig: Rig,
  clients: ClientProc[],
  n: number,
): Promise<{ proc: ClientProc; queue: number }[]> {
  const got = await Promise.all(Array.from({ length: n }, () => ClientProc.spawn()));
  clients.push(...got);
  const leases = [];
  for (const proc of got)
    leases.push({ proc, queue: (await proc.call('connect', { socket: rig.socket })).info.queue });
  return leases;
}

const released = (rig: Rig, left = 0) =>
  until('the leases to be released', () => rig.broker.leases.all().length === left, 10_000);

test('the broker holds at most lifetime.prepared_slice_fds prepared fds, however many leases end', async () => {
  await withRig(2, 6, async (rig, clients) => {
    for (let round = 0; round < 2; round++) {
      const held = await lease(rig, clients, 5);
      assert.equal(queuePageFds(), 5, 'the five leases hold one queue page fd each');
      await Promise.all(held.map((l) => l.proc.exit()));
      await released(rig);
      assert.equal(rig.device.preparedSliceFdCount, 2, `round ${round}: two prepared, the cap`);
      // The count includes fds asked for and not yet answered: a lease without IOVA maps ends without waiting
      // for the prepare request sent in its reclaim's last batch. Waited for, then checked: never more than two.
      await until('the prepared fds to arrive', () => queuePageFds() >= 2, 5000).catch(() => undefined);
      assert.equal(queuePageFds(), 2, `round ${round}: the broker holds two queue page fds, no more`);
    }
  });
});

test('a grant takes the most recently prepared queue first, and asks the device for no slice fd', async () => {
  await withRig(2, 4, async (rig, clients) => {
    const [, b, c] = await lease(rig, clients, 3);
    assert.deepEqual([b!.queue, c!.queue], [1, 2]);
    await b!.proc.exit();
    await released(rig, 2);
    await c!.proc.exit();
    await released(rig, 1);
    const asked = countSliceRequests(rig);
    const [d] = await lease(rig, clients, 1);
    assert.equal(d!.queue, 2, 'queue 2, prepared last, before queue 1 (lowest)');
    const [e] = await lease(rig, clients, 1);
    assert.equal(e!.queue, 1, 'then queue 1, prepared before it');
    assert.equal(asked(), 0, 'neither grant asked the device for a slice fd');
    const [f] = await lease(rig, clients, 1);
    assert.equal(f!.queue, 3, 'then the lowest free queue');
    assert.equal(asked(), 1, 'which was not prepared: its grant asks');
    // The fds handed out from the prepared ones map the queues' pages: a NOP completes on each.
    for (const l of [d!, e!]) {
      await l.proc.call('queue');
      assert.equal((await l.proc.call('submit', { desc: { opcode: 'NOP' } })).status, 'OK');
    }
  });
});

test('a quarantined lease keeps no prepared fd: nothing of the cap is held for a queue never leased again', async () => {
  await withRig(8, 2, async (rig, clients) => {
    const [a] = await lease(rig, clients, 1);
    await a!.proc.call('queue'); // its rings: one IOVA map for the reclaim to unmap
    // Unmapping the lease's rings fails: its reclaim cannot make it safe, and the lease is quarantined. The
    // unmaps go in the reclaim's last batch, with the request for the next grant's slice fd behind them, so
    // that fd is asked for before the failure is known and must be dropped when the lease is quarantined.
    const device = rig.device;
    const asked = countSliceRequests(rig);
    const dmaUnmap = device.dmaUnmap.bind(device);
    device.dmaUnmap = () => Promise.reject(Object.assign(new Error('test: unmap refused'), { code: 'EIO' }));
    await a!.proc.exit();
    await until(
      'the lease to be quarantined',
      () => rig.broker.leases.all().some((l) => l.state === 'quarantined'),
      10_000,
    );
    device.dmaUnmap = dmaUnmap;
    assert.equal(asked(), 1, "the reclaim asked for the next grant's slice fd behind its unmaps");
    assert.equal(device.preparedSliceFdCount, 0, 'nothing prepared for the quarantined queue');
    // The answer to that request came after the quarantine: an fd the broker then holds until it drops it.
    const reply = await asked.replies[0]!;
    assert.equal(reply.fds.length, 1, 'the device answered with the slice fd');
    await until(
      'the broker to close the fd that came for the quarantined queue',
      () => reply.fds.every((fd) => fd.closed) && queuePageFds() === 0,
      5000,
    );
    assert.equal(device.preparedSliceFdCount, 0, 'nothing prepared for the quarantined queue');
  });
});
