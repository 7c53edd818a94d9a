// Granting a lease (LeaseTable.grant): policy, resources, slice fds and device programming, and the one
// audit line saying how it went. Split from leases.ts, which keeps the table.

import { batchCommands } from '../device/vfio-user-device.js';
import type { Driver } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import { deviceRefusal } from './device-refusal.js';
import { Lease } from './lease.js';
import type { LeaseTable } from './leases.js';
import type { CallerContext, LeaseRequest } from './policy.js';
import { SliceUnit } from './slices.js';

/** Policy check, resources, device programming, slice fds. Throws VfioError with the reason on refusal. */
export async function grantLease(
  table: LeaseTable,
  ctx: CallerContext,
  req: LeaseRequest,
  decided?: (lease: Lease) => void,
): Promise<Lease> {
  const t0 = process.hrtime.bigint();
  const who = { pid: ctx.pid, uid: ctx.uid, gid: ctx.gid, exe: ctx.exe, kind: req.kind };
  table.checkOpen(who);
  // This request is itself counted in `granting`: compare the others against the limit.
  const usage = table.usage(ctx);
  usage.leases -= 1;
  const verdict = await table.policy.checkLease(ctx, req, usage, table.driver.capacity?.(req.kind) ?? 1);
  if (!verdict.allow) {
    table.audit.write({ event: 'deny', ...who, reason: verdict.reason, code: 'EACCES' });
    throw new VfioError('EACCES', verdict.reason);
  }
  // The device may have gone (or come back with new pools) while policy decided: check again, then take
  // resources of this generation without yielding in between.
  table.checkOpen(who);
  const generation = table.generation;
  const suspensions = table.suspensions;
  let resources: ReturnType<Driver['acquire']>;
  try {
    resources = table.driver.acquire(req);
  } catch (err) {
    table.audit.write({
      event: 'deny',
      ...who,
      reason: (err as Error).message,
      code: (err as { code?: string }).code ?? 'EINVAL',
    });
    throw err;
  }
  const lease = new Lease(table.nextId(req.kind), req, ctx, resources);
  lease.generation = generation;
  try {
    // The slice fds and the device programming go out together: one device connection serves them in
    // order, so the grant waits for one round trip, not one per command. Every slice that came is kept
    // (and disposed below) whatever else failed.
    // Those without fds go in one sendmsg (batchCommands): one wake-up of the device.
    const commands = batchCommands(table.device, () =>
      Promise.allSettled([
        ...resources.slices.map(async (s) => {
          const units =
            s.mappable === false ? [] : await sliceUnits(table, s.region, s.offset, s.size, s.unit);
          lease.slices.set(s.leaseRegion, units);
        }),
        table.driver.activate(resources),
      ]),
    );
    // Policy and resources have decided what the client is told (its queue, window, vectors) and the device
    // commands are on their way: the caller may answer VERSION now, while they are served (pending-session.ts).
    decided?.(lease);
    const settled = await commands;
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (generation !== table.generation) {
      throw new VfioError('ENODEV', table.deviceGone ?? 'the device connection was lost during the grant');
    }
    // A recovery or an owner's reset began while the device programmed this lease: it reclaimed the leases in
    // the table, not this one, and resets the device behind these commands (the queue would be left disabled,
    // its holder never told).
    if (suspensions !== table.suspensions) {
      throw new VfioError(
        'EAGAIN',
        `${table.suspended ?? 'the device was recovered'} (it began while this lease was being granted)`,
      );
    }
  } catch (err) {
    for (const units of lease.slices.values()) for (const u of units) u.dispose(table.watcher);
    // Resources of a lost device are not returned: the next boot makes new pools.
    if (generation === table.generation) table.driver.release(resources);
    table.audit.write({
      event: 'deny',
      ...who,
      reason: `device refused the lease: ${(err as Error).message}`,
      code: 'device',
    });
    // The device's own errno and words when it refused (the audit line above records it); EIO only for
    // what carries no errno.
    const refusal = deviceRefusal(err, 'granting the lease');
    throw err instanceof VfioError
      ? err
      : (refusal?.error ?? new VfioError('EIO', `device refused the lease: ${(err as Error).message}`));
  }
  table.add(lease);
  table.audit.write({
    event: 'grant',
    lease: lease.id,
    ...who,
    queue: resources.queue,
    window: resources.window,
    iovaView: resources.view?.mode ?? null,
    ms: Number(process.hrtime.bigint() - t0) / 1e6,
  });
  // The lease is granted and in the table: a listener's failure (a bug) is logged, not made the grant's, which
  // would leave the lease in the table with no session to end it.
  try {
    table.emit('granted', lease);
  } catch (err) {
    table.log(`lease ${lease.id}: a 'granted' listener threw: ${(err as Error)?.message ?? String(err)}`);
  }
  return lease;
}

async function sliceUnits(
  table: LeaseTable,
  region: number,
  offset: bigint,
  size: bigint,
  unit: bigint,
): Promise<SliceUnit[]> {
  if (!table.device.capabilities.mappableSlices) return []; // mediated: REGION_READ/WRITE through the broker only
  const ranges = [];
  for (let o = 0n; o < size; o += unit) ranges.push({ offset: offset + o, length: unit });
  const fds = await table.device.sliceFds(region, ranges);
  return fds.map((fd) => new SliceUnit(fd));
}
