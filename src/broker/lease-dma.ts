// A lease session's DMA_MAP and DMA_UNMAP (session.ts hands them here): the checks a map must pass — an fd
// (or policy.dma_without_fd = "relay" on a vfio-user device), the lease's IOVA view, whole pages, a usable
// fd, the uid's limits and the policy — then the device call at the device's address, undone if reclaim began
// meanwhile. A map without an fd is served through the broker (lease-dma-relay.ts). It stands alone because
// it is the one part of a session that spends the client's quota and the policy's say; the rest serves
// regions and wires interrupts.

import { VfioError } from '../errors.js';
import type { DmaMapRequest, DmaUnmapRequest } from '../vfio/user/device-model.js';
import { checkDmaFd } from '../vfio/user/dma-fd-check.js';
import { VFIO_DMA_UNMAP_FLAG_ALL } from '../vfio/user/protocol.js';
import { leaseDeviceCall } from './device-refusal.js';
import type { Lease, LeaseMapping } from './lease.js';
import type { LeaseTable } from './leases.js';

const DMA_READ = 1;
const DMA_WRITE = 2;

/** DMA_MAP for `lease`, whose IOVAs must be multiples of `page`; closes the request's fd either way. */
export async function mapForLease(
  table: LeaseTable,
  lease: Lease,
  page: bigint,
  req: DmaMapRequest,
): Promise<void> {
  let unreserve: (() => void) | null = null;
  try {
    lease.checkLive();
    if (!req.fd) refuseWithoutFd(table);
    const w = lease.resources.view;
    if (!w) throw new VfioError('EPERM', `lease kind '${lease.kind}' has no IOVA window`);
    if (req.iova % page || req.size % page || req.size === 0n) {
      throw new VfioError(
        'EINVAL',
        `iova 0x${req.iova.toString(16)} and size 0x${req.size.toString(16)} must be non-zero multiples of the ${page}-byte page`,
      );
    }
    if (req.iova < w.base || req.iova + req.size > w.base + w.size) {
      throw new VfioError(
        'EPERM',
        `[0x${req.iova.toString(16)}, +0x${req.size.toString(16)}) is outside the lease's IOVA ${w.mode === 'translated' ? 'view' : 'window'} [0x${w.base.toString(16)}, +0x${w.size.toString(16)})`,
      );
    }
    const read = (req.flags & DMA_READ) !== 0;
    const write = (req.flags & DMA_WRITE) !== 0;
    // A pipe, an empty memfd, a range past the end: refused here, by name, rather than by the device.
    if (req.fd) {
      checkDmaFd(
        req.fd,
        { offset: req.offset, size: req.size, write },
        table.config.policy.dmaFiles,
        lease.ctx.pid,
      );
    } else if (table.relay.has(toDevice(lease, req.iova))) {
      // A second map where memory is relayed already: refused before the policy hears of it (relay.add
      // refuses one that raced this check).
      throw new VfioError('EEXIST', `memory is mapped at 0x${req.iova.toString(16)} already`);
    }
    // Checked against usage that counts maps still in flight (released in `finally`), so concurrent
    // DMA_MAPs of one uid cannot pass a limit together.
    const usage = table.usage(lease.ctx);
    unreserve = table.reserveMap(lease.ctx.uid, req.size);
    const verdict = await table.policy.checkMap(
      lease.ctx,
      { op: 'map', iova: req.iova, size: req.size, read, write, relayed: !req.fd },
      usage,
    );
    if (!verdict.allow) {
      table.audit.write({
        event: 'deny-map',
        lease: lease.id,
        pid: lease.ctx.pid,
        uid: lease.ctx.uid,
        reason: verdict.reason,
      });
      throw new VfioError('EACCES', verdict.reason);
    }
    const fd = req.fd;
    const deviceIova = toDevice(lease, req.iova);
    const mapping: LeaseMapping = { iova: req.iova, deviceIova, size: req.size, read, write };
    // Relayed from before the device has the map (it may access it at once) until the mapping goes.
    if (!fd) {
      mapping.relayed = true;
      table.relay.add(lease, mapping);
    }
    const mapped = leaseDeviceCall(
      table,
      lease,
      'DMA_MAP',
      () => range(req.iova, req.size),
      () =>
        fd
          ? table.device.dmaMap({ fd, offset: req.offset, iova: deviceIova, size: req.size, read, write })
          : table.device.dmaMapWithoutFd!({ iova: deviceIova, size: req.size, read, write }),
    );
    // Sent to the device: the connection may start the session's next pipelined request (its device call
    // queues behind this one on the device connection, which serves in order).
    req.issued?.();
    try {
      await mapped;
    } catch (err) {
      // Not answered in time: the device may still make the map, which no mapping of the lease records
      // (a relayed one then reaches nothing: its relay goes now).
      if ((err as { code?: string })?.code === 'ETIMEDOUT')
        lease.maybeMaps.push({ deviceIova, size: req.size });
      table.relay.remove(mapping);
      throw err;
    }
    if (!lease.live) {
      // Reclaim started while the device mapped it: undo, so nothing of this client stays mapped.
      table.relay.remove(mapping);
      await table.device.dmaUnmap(deviceIova, req.size).catch((err) => {
        lease.maybeMaps.push({ deviceIova, size: req.size });
        throw err;
      });
      throw new VfioError('ENODEV', `lease ${lease.id} is ${lease.state}`);
    }
    lease.mappings.set(req.iova, mapping);
  } finally {
    unreserve?.();
    req.fd?.close(); // the device holds its own reference now (or the map was refused)
  }
}

/**
 * DMA_UNMAP for `lease`: whole mappings only, after the policy (a module may audit or veto unmaps). With
 * VFIO_DMA_UNMAP_FLAG_ALL (address and size 0, validate.ts) every mapping of the lease goes, and none is no
 * error: QEMU sends it when a guest's IOMMU address space goes away (a reset, translation turned off).
 */
export async function unmapForLease(table: LeaseTable, lease: Lease, req: DmaUnmapRequest): Promise<void> {
  const all = (req.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
  const hit = all ? [...lease.mappings.values()] : mappingsIn(lease, req);
  if (hit.length === 0) {
    if (all) return;
    throw new VfioError(
      'ENOENT',
      `no mapping of this lease in [0x${req.iova.toString(16)}, +0x${req.size.toString(16)})`,
    );
  }
  // What the policy is told: the range asked for, or for "all" the span of the lease's mappings.
  let [iova, end] = [req.iova, req.iova + req.size];
  if (all) [iova, end] = span(hit);
  // Unmaps pass the policy too (a module may audit or veto them); the declarative limits concern maps only.
  const verdict = await table.policy.checkMap(
    lease.ctx,
    { op: 'unmap', iova, size: end - iova },
    table.usage(lease.ctx),
  );
  if (!verdict.allow) throw new VfioError('EACCES', verdict.reason);
  for (const m of hit) {
    await leaseDeviceCall(
      table,
      lease,
      'DMA_UNMAP',
      () => range(m.iova, m.size),
      () => table.device.dmaUnmap(m.deviceIova, m.size),
    );
    lease.mappings.delete(m.iova);
  }
}

/**
 * A DMA_MAP without an fd: refused unless the policy relays such memory and the device can map it (a vfio-user
 * device reaches it by message; the kernel's VFIO maps only memory the broker could pin, which it is not).
 */
function refuseWithoutFd(table: LeaseTable): void {
  if (table.config.policy.dmaWithoutFd !== 'relay') {
    throw new VfioError(
      'EINVAL',
      'DMA_MAP without an fd: this broker maps only memory with an fd for a lease (policy.dma_without_fd = "refuse"); share the memory (QEMU: a memory-backend-memfd, share=on) or ask for "relay"',
    );
  }
  if (!table.device.dmaMapWithoutFd) {
    throw new VfioError(
      'EINVAL',
      "DMA_MAP without an fd: this broker's device is driven through the kernel's VFIO, which maps only memory with an fd",
    );
  }
}

/** The smallest [start, end) holding every one of `maps` (not empty). */
function span(maps: LeaseMapping[]): [bigint, bigint] {
  let [start, end] = [maps[0]!.iova, maps[0]!.iova + maps[0]!.size];
  for (const m of maps) {
    if (m.iova < start) start = m.iova;
    if (m.iova + m.size > end) end = m.iova + m.size;
  }
  return [start, end];
}

/** The lease's mappings inside [iova, +size); throws EINVAL if one only overlaps it (it would be cut). */
function mappingsIn(lease: Lease, req: DmaUnmapRequest): LeaseMapping[] {
  const end = req.iova + req.size;
  const hit: LeaseMapping[] = [];
  for (const m of lease.mappings.values()) {
    if (m.iova >= req.iova && m.iova + m.size <= end) hit.push(m);
    else if (m.iova < end && m.iova + m.size > req.iova)
      throw new VfioError('EINVAL', 'DMA_UNMAP must cover whole mappings');
  }
  return hit;
}

/** The device IOVA of a client's IOVA: its view's base is the lease window's base (identity: the same). */
function toDevice(lease: Lease, iova: bigint): bigint {
  const { window, view } = lease.resources;
  return window && view ? iova - view.base + window.base : iova;
}

function range(iova: bigint, size: bigint): string {
  return `[0x${iova.toString(16)}, +0x${size.toString(16)})`;
}
