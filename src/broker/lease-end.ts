// Two steps of a lease's end, split from leases.ts: the owner's revoke (notice now, reclaim at the
// deadline) and unmapping a lease's whole IOVA window in reclaim.

import type { Device } from '../device/device.js';
import { VfioError } from '../errors.js';
import { LongTimer } from '../util/long-timer.js';
import { checkRevokeDeadline, type Lease } from './lease.js';
import type { LeaseTable } from './leases.js';

/** Owner-initiated revoke: REQ notice now, forced reclaim at the deadline (or when the client lets go). */
export function revokeLease(table: LeaseTable, id: string, deadlineMs: number, reason: string): Lease {
  checkRevokeDeadline(deadlineMs);
  const lease = table.get(id);
  if (!lease) throw new VfioError('ENOENT', `no lease '${id}'`);
  if (lease.state !== 'active') return lease;
  lease.state = 'revoking';
  lease.deadline = Date.now() + deadlineMs;
  lease.endReason = reason;
  table.audit.write({
    event: 'revoke',
    lease: id,
    pid: lease.ctx.pid,
    uid: lease.ctx.uid,
    deadlineMs,
    reason,
  });
  table.emit('state', lease);
  lease.notify('req');
  if (deadlineMs === 0) {
    void table.reclaim(lease, `revoked with no deadline: ${reason}`);
    return lease;
  }
  lease.revokeTimer = new LongTimer(
    deadlineMs,
    () => void table.reclaim(lease, `deadline of ${deadlineMs} ms passed: ${reason}`),
  );
  return lease;
}

/**
 * Unmap every IOVA of the lease. The lease owns its whole window, so one DMA_UNMAP over the window takes
 * them all at once (64 maps: 2 ms instead of 22 ms one by one); if the device refuses that, map by map.
 */
export async function unmapAll(
  device: Device,
  lease: Lease,
  step: (what: string, fn: () => Promise<void>, critical: boolean | 'on-timeout') => Promise<void>,
) {
  if (lease.mappings.size === 0) return;
  const w = lease.resources.window;
  if (w && lease.mappings.size > 1) {
    try {
      await device.dmaUnmap(w.base, w.size);
      lease.mappings.clear();
      return;
    } catch {
      // fall through: unmap one by one, each failure recorded
    }
  }
  for (const m of [...lease.mappings.values()]) {
    await step(`unmap 0x${m.deviceIova.toString(16)}`, () => device.dmaUnmap(m.deviceIova, m.size), true);
    lease.mappings.delete(m.iova);
  }
}
