// Reclaim (LeaseTable.reclaim): a lease's end in the one safe order — quiesce the work, unmap the memory,
// revoke (or wait for the release of) the slices — before anything goes back to the pool; and the shorter end
// of a lease whose device connection is gone. Split from leases.ts, which keeps the table, its accounting and
// the upgrade's hold on reclaims: this file is what one reclaim does, step by step.

import { batchCommands } from '../device/vfio-user-device.js';
import { VFIO_PCI_MSIX_IRQ_INDEX } from '../vfio/uapi/vfio.js';
import type { DirectSlices } from './audit-scan/direct-slices.js';
import type { Lease } from './lease.js';
import { letGoOfHolds, unmapAll } from './lease-end.js';
import type { LeaseTable } from './leases.js';
import { retryLocalTransient } from './local-retry.js';

/**
 * What a reclaim does to the table beyond its public surface: take a lease out of it (its reclaim ended),
 * wait out an upgrade's hold once a lease's slices came back, and learn of the loss of the device a lease was
 * granted on. LeaseTable makes the one instance and hands it only to the functions below.
 */
export interface ReclaimOps {
  remove(lease: Lease): void;
  pastRelease(lease: Lease): Promise<void>;
  lostOf(lease: Lease): Promise<void>;
}

/**
 * Take everything of `lease` back, in the one safe order (LeaseTable.reclaim calls it once per lease): disconnect;
 * revoke the slices, quiesce and unwire the vectors (one batch, one round trip); unmap every IOVA; where a slice's
 * revoke failed, wait for its release; then scrub, prepare, and give the resources back — or quarantine them when
 * a step left them unsafe.
 */
export async function reclaimLease(
  table: LeaseTable,
  ops: ReclaimOps,
  lease: Lease,
  reason: string,
): Promise<void> {
  const t0 = process.hrtime.bigint();
  lease.state = 'reclaiming';
  lease.endReason = reason;
  lease.revokeTimer?.cancel();
  table.emit('state', lease);
  table.audit.write({ event: 'reclaim', lease: lease.id, pid: lease.ctx.pid, uid: lease.ctx.uid, reason });
  // A revoke's deadline passed: whoever maps an audited slice now is killed before the hang-up below, which
  // a holder answers by unmapping (then no later scan would see it, and the kill would depend on timing).
  if (lease.deadline !== null && Date.now() >= lease.deadline && table.direct?.has(lease.id))
    table.direct.killMappers(lease.id);
  lease.disconnect?.(reason);
  // Requests the session had in progress finish first: they see the lease is no longer live and undo
  // what they did, so nothing they map or wire can appear after the steps below.
  await lease.settle();
  if (deviceLost(table, lease)) return forgetLease(table, ops, lease, reason, t0);
  const problems: string[] = [];
  // An unmap or revoke failed, or a quiesce or reset did not finish: this lease's window, slices or queue
  // may still be reachable or running.
  let unsafe = false;
  const step = async (what: string, fn: () => Promise<void>, critical: boolean | 'on-timeout') => {
    try {
      // A command that never left the broker (a transient sendmsg failure) is sent again (local-retry.ts).
      await retryLocalTransient(fn);
    } catch (err) {
      problems.push(`${what}: ${(err as Error).message}`);
      const code = (err as { code?: string }).code;
      if (critical === 'on-timeout' ? code === 'ETIMEDOUT' : critical && code !== 'ENOENT') unsafe = true;
    }
  };
  // A holder that wired REQ was offered notice, and the devlease client reads a faulting slice as revoked:
  // its leftover mappings fault. One that did not (a stock client: QEMU never wires REQ) is not killed for
  // it: the device detaches from the slice's memory and the holder keeps a page that reaches nothing.
  const fault = lease.reqFd !== null && !lease.reqFd.closed;
  const units = [...lease.slices.values()].flat();
  let revoked = table.config.lifetime.revoke && table.device.capabilities.revocableSlices;
  // The slices are revoked first, the quiesce right behind them on the device's one connection (served in
  // this order): the holder loses its mappings one device round trip after reclaim begins (SA-1: its queue
  // page, so it can no longer ring or rewrite its rings while the queue is stopped), and the device takes
  // the stop in the same round trip. Revoking needs no quiesce first: a slice is the device's own memory,
  // the device answers only once it no longer uses the old backing, and nothing of the holder's memory
  // (the IOVA maps) is let go of until the quiesce has finished below.
  // The vectors are unwired right behind the quiesce, in the same round trip: an unwired vector only stops
  // signalling the holder's eventfd (an ABORTED completion of the stop signals nobody), it lets go of no
  // memory, and the vectors go back to the pool only at the end. A lease without IOVA maps then ends after
  // this one round trip (issue 16: revoke → lease free).
  // All in one sendmsg to the device (batchCommands; the revokes carry fds and go ahead on their own): one
  // wake-up of it, not one per command.
  // A quiesce that fails outright (the device connection went) leaves the rest to device recovery; one that
  // times out leaves work running on a live device.
  const irqIndex = lease.resources.irqIndex ?? VFIO_PCI_MSIX_IRQ_INDEX;
  const [revokes, quiesced, unwired] = batchCommands(table.device, () => [
    revoked
      ? units.map((u) => step('revoke slice', () => table.device.revokeSlice(u.deviceFd, { fault }), false))
      : [],
    step('quiesce', () => table.driver.quiesce(lease.resources), 'on-timeout'),
    lease.resources.vectors.map((v) =>
      step(`unwire vector ${v}`, () => table.device.setIrqs(irqIndex, v, [null]), true),
    ),
  ]);
  await quiesced;
  // The revokes went before the quiesce on the one connection, so they have been answered: a failed one is known.
  await Promise.all(revokes);
  const readyAhead = revoked && !unsafe && !problems.some((p) => p.startsWith('revoke slice'));
  // With the work stopped, the unmaps go to the device together (served in this order on its one connection,
  // in one sendmsg), so reclaim waits for one more round trip, and none without maps. Behind them, not
  // awaited, the driver asks for what the next grant needs (Driver.prepareAhead): its answer, an fd, does not
  // delay theirs.
  await batchCommands(table.device, () => {
    const done = unmapAll(table.device, lease, step);
    if (readyAhead) table.driver.prepareAhead?.(lease.resources);
    return done;
  });
  await Promise.all(unwired);
  // Closed here, not left to letGoOfHolds below: the wait for the slices' release between can last as long as
  // a holder keeps them, and meanwhile these fds would be held for nothing and a relay still set would refuse
  // an upgrade (cannotUpgrade), which carries a lease awaiting release.
  lease.errFd?.close();
  lease.reqFd?.close();
  lease.noticeFd?.close();
  lease.intx?.close(); // its line was unwired above, with the vectors
  lease.intx = null;
  // A slice whose revoke failed falls back to waiting for its observed release.
  if (revoked && problems.some((p) => p.startsWith('revoke slice'))) revoked = false;
  if (!revoked && units.some((u) => u.outstanding > 0)) {
    lease.state = 'awaiting-release';
    table.emit('state', lease);
    table.audit.write({
      event: 'awaiting-release',
      lease: lease.id,
      outstanding: units.map((u) => u.outstanding),
    });
    lease.parked();
    await Promise.race([Promise.all(units.map((u) => u.whenReleased())), ops.lostOf(lease)]);
  }
  // Slices not revoked go back only on their release count; one whose count lost events (slices.ts) may still
  // be mapped by its last holder, or be waited for forever: never handed to anyone again.
  if (!revoked && units.some((u) => u.countLost)) {
    problems.push(
      'slice release count lost (the inotify queue overflowed): its memory may still be mapped by the last holder',
    );
    unsafe = true;
  }
  const direct = table.direct?.has(lease.id) ? table.direct : null;
  if (direct) await awaitDirectRelease(table, ops, lease, direct);
  if (lease.state === 'awaiting-release') await ops.pastRelease(lease);
  // The device went away while we worked: nothing of it can be cleaned, and nothing of it is reused.
  if (deviceLost(table, lease)) return forgetLease(table, ops, lease, reason, t0, problems);
  if (!revoked && (units.length || direct)) {
    // Nobody holds the slices any more, but they still hold what the last client left: scrub before reuse.
    await step('scrub', () => table.driver.scrub(lease.resources), true);
  }
  if (deviceLost(table, lease)) return forgetLease(table, ops, lease, reason, t0, problems);
  // The next grant of these resources finds them ready (SA-1: the queue reset after its last holder lost
  // the queue page). Not where scrub already did it; a failure leaves the work to the grant.
  let ready = false;
  if (revoked && !unsafe && table.driver.prepare) {
    const before = problems.length;
    await step('prepare', () => table.driver.prepare!(lease.resources), false);
    ready = problems.length === before;
  }
  if (deviceLost(table, lease)) return forgetLease(table, ops, lease, reason, t0, problems);
  // The slice fds and their watches, and the audited slices' watch (the notification fds went above). A step
  // of the broker's own that throws is a bug, and nothing says what it left: the lease is quarantined.
  const notLetGo = letGoOfHolds(table, lease);
  if (notLetGo.length) {
    problems.push(...notLetGo);
    unsafe = true;
  }
  // A slice fd the driver asked for in the last batch (prepareAhead), for the next grant
  // (Device.prepareSliceFds), is kept only for resources that go back to the pool readied: not of a lease
  // quarantined or scrubbed (it would hold one of the broker's few prepared fds for nothing, or for memory
  // nobody revoked).
  if (!ready || unsafe) forgetPrepared(table, lease);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (unsafe) {
    // Never hand these resources to another client; the operator sees why (devlease leases, audit).
    lease.state = 'quarantined';
    lease.quarantineReason = problems.join('; ');
    table.audit.write({ event: 'quarantined', lease: lease.id, ms, problems });
    table.emit('state', lease);
    lease.parked();
    return;
  }
  table.driver.release(lease.resources);
  lease.state = 'released';
  ops.remove(lease);
  table.audit.write({
    event: 'released',
    lease: lease.id,
    ms,
    revoked,
    // How the slices were revoked: left faulting ('fault') or only detached from the device ('detach').
    ...(revoked && units.length ? { revokedAs: fault ? 'fault' : 'detach' } : {}),
    problems,
  });
  table.emit('state', lease);
  table.emit('released', lease);
  lease.parked();
}

/**
 * Audited slices (audit-scan/direct-slices.ts) go back only when no process maps them any more, as the /proc
 * scan sees it: a forked child that inherited the mapping holds the slice until it exits. A revoke's deadline
 * (the lease has one) first kills every process still mapping them (audit.deadline_action).
 */
async function awaitDirectRelease(
  table: LeaseTable,
  ops: ReclaimOps,
  lease: Lease,
  direct: DirectSlices,
): Promise<void> {
  lease.state = 'awaiting-release';
  table.emit('state', lease);
  table.audit.write({ event: 'awaiting-release', lease: lease.id, direct: true });
  lease.parked();
  await Promise.race([direct.whenReleased(lease.id, lease.deadline !== null), ops.lostOf(lease)]);
}

/**
 * End a lease whose device connection is gone. The device process took its DMA mappings, interrupt wiring
 * and slice memory with it, so there is nothing to quiesce, unmap, revoke or scrub, and its resources are
 * not returned to the driver: the next boot makes new pools. A client still mapping a slice of the old
 * device reaches only that dead device's memory.
 */
export function forgetLease(
  table: LeaseTable,
  ops: ReclaimOps,
  lease: Lease,
  reason: string,
  t0: bigint,
  problems: string[] = [],
): void {
  const outstanding = [...lease.slices.values()].flat().reduce((n, u) => n + u.outstanding, 0);
  problems.push(...letGoOfHolds(table, lease));
  lease.mappings.clear();
  lease.state = 'released';
  ops.remove(lease);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  table.audit.write({
    event: 'released',
    lease: lease.id,
    ms,
    deviceLost: true,
    reason,
    outstandingSliceFds: outstanding,
    problems,
  });
  table.emit('state', lease);
  table.emit('released', lease);
  lease.parked();
}

/** Drop the slice fds prepared for the next grant of `lease`'s resources (they do not go back readied). */
export function forgetPrepared(table: LeaseTable, lease: Lease): void {
  for (const s of lease.resources.slices)
    table.device.forgetPreparedSliceFds?.(s.region, [{ offset: s.offset, length: s.size }]);
}

/** Whether the device connection `lease` was granted on is gone. */
function deviceLost(table: LeaseTable, lease: Lease): boolean {
  return lease.generation !== table.generation;
}
