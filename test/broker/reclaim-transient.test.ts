// A transient local failure while reclaiming must not quarantine a lease
// (issue 15, the fail-nth walk of revoke with a deadline): a device command
// whose sendmsg failed with ENOMEM never left the broker, so reclaim sends it
// again (src/broker/local-retry.ts) and the lease ends released, its queue
// leased again. It once ended `quarantined` for good after one such failure.
// Each of the first sends of reclaim is failed in turn (quiesce, unwire,
// unmap); the fail-nth hook is installed for this file, hence the dynamic imports.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

process.env.DEVLEASE_FAIL_NTH ??= '0';
const { failCall, failNth, failNthFired } = await import('../../src/sys/fail-nth.js');
const { connect } = await import('../../src/client/lease.js');
const { Sa1Queue } = await import('../../src/client/sa1-queue.js');
const { leaseAndCopy } = await import('../helpers/lease-copy.js');
const { startRig, until } = await import('../helpers/broker-rig.js');
const { trackFdLeaks } = await import('../helpers/fds.js');
type Rig = Awaited<ReturnType<typeof startRig>>;

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  // No heartbeat in the middle (its MMIO reads are sends of their own).
  rig = await startRig({ config: { sa1: { heartbeat_ms: 60_000 } } });
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

const copyWorks = () => leaseAndCopy(rig.socket, { timeoutMs: 10_000, byte: 0xa5 });

/** One revoke with the kth device send of its reclaim failing; returns whether a send failed. */
async function revokeFailingSend(k: number): Promise<boolean> {
  const lease = await connect({ socket: rig.socket, request: {}, timeoutMs: 10_000 });
  let fired: string | null = null;
  try {
    await Sa1Queue.create(lease, { entries: 4 });
    await lease.dma.alloc(4096);
    await lease.dma.alloc(4096);
    const id = lease.info.lease;
    const seen = rig.audit.length;
    failCall('sendmsg', k);
    try {
      rig.broker.leases.revoke(id, 0);
      await until('the revoked lease to leave the table', () => rig.broker.leases.all().length === 0, 15_000);
    } catch (err) {
      const states = rig.broker.leases.all().map((l) => `${l.id}:${l.state} (${l.quarantineReason ?? ''})`);
      throw new Error(`send ${k} failing: ${(err as Error).message}; leases: ${states.join(', ') || 'none'}`);
    } finally {
      fired = failNthFired();
      failNth(0);
    }
    const ends = rig.audit
      .slice(seen)
      .filter((e) => e.lease === id && ['released', 'quarantined'].includes(e.event))
      .map((e) => e.event);
    assert.deepEqual(ends, ['released'], `send ${k} failing: the lease ended ${ends.join(', ')}`);
  } finally {
    lease.close();
  }
  await copyWorks(); // the queue and the broker serve the next client
  await until('the lease table to empty', () => rig.broker.leases.all().length === 0, 15_000);
  return fired === 'sendmsg';
}

test("each device send of a revoke's reclaim fails once in turn (ENOMEM): every lease still ends released", {
  timeout: 600_000,
}, async () => {
  let k = 1;
  while (await revokeFailingSend(k)) {
    k++;
    assert.ok(k <= 64, 'reclaim still making device sends at the 64th: the walk does not end');
  }
  // The slice revoke (it carries the slice fd: a sendmsg of its own), the quiesce's write and first read with
  // the vector's unwiring (one sendmsg: a batch), the unmap: at least three sends.
  assert.ok(
    k > 3,
    `reclaim made only ${k - 1} device sends; expected the revoke, quiesce + unwire and unmap`,
  );
});
