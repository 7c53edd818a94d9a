// A lease session's interrupts (session.ts hands them here): what GET_IRQ_INFO shows of each index, and
// SET_IRQS — ERR, REQ and devlease's notice irq kept on the lease for the broker to signal, MSI-X vectors
// wired straight to the device (the broker is not on the interrupt path), taken back if reclaim began
// meanwhile. It stands alone because it is the session's only traffic in eventfds and their ownership.

import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import {
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../vfio/uapi/vfio.js';
import type { IrqDescription, IrqSetRequest } from '../vfio/user/device-model.js';
import { leaseDeviceCall } from './device-refusal.js';
import { adoptEventFd } from './eventfd-check.js';
import type { Lease } from './lease.js';
import { type IntxDevice, IntxRelay } from './lease-intx.js';
import type { LeaseTable } from './leases.js';

/**
 * devlease's notice irq: index 5, the first past VFIO_PCI_NUM_IRQS (QEMU never looks there). Offered only to
 * clients that proposed devlease in VERSION; signalled for per-queue faults, which never signal ERR.
 */
export const DEVLEASE_NOTICE_IRQ_INDEX = VFIO_PCI_NUM_IRQS;

/** GET_IRQ_INFO: the lease's vectors, one each of ERR and REQ, the notice irq for a devlease client. */
export function leaseIrqInfo(lease: Lease, devlease: boolean, index: number): IrqDescription {
  const count =
    index === VFIO_PCI_MSIX_IRQ_INDEX
      ? lease.resources.vectors.length
      : index === VFIO_PCI_ERR_IRQ_INDEX ||
          index === VFIO_PCI_REQ_IRQ_INDEX ||
          (index === DEVLEASE_NOTICE_IRQ_INDEX && devlease)
        ? 1
        : 0;
  return { index, flags: count ? VFIO_IRQ_INFO_EVENTFD : 0, count };
}

/** SET_IRQS for `lease` (`devlease`: the client negotiated the notice irq); closes every fd it does not keep. */
export async function wireLeaseIrqs(
  table: LeaseTable,
  lease: Lease,
  devlease: boolean,
  req: IrqSetRequest,
): Promise<void> {
  const fds = req.fds;
  try {
    lease.checkLive();
    const dataType = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    if (dataType !== VFIO_IRQ_SET_DATA_EVENTFD && !(dataType === VFIO_IRQ_SET_DATA_NONE && req.count === 0)) {
      throw new VfioError(
        'EINVAL',
        'a lease takes eventfds (DATA_EVENTFD) or DATA_NONE with count 0 (disable)',
      );
    }
    // Only real eventfds, made non-blocking: a pipe or a full counter must never stall the broker or the device.
    for (const fd of fds) if (fd) adoptEventFd(fd);
    const notice = req.index === DEVLEASE_NOTICE_IRQ_INDEX && devlease;
    if (req.index === VFIO_PCI_ERR_IRQ_INDEX || req.index === VFIO_PCI_REQ_IRQ_INDEX || notice) {
      const slot = notice ? 'noticeFd' : req.index === VFIO_PCI_ERR_IRQ_INDEX ? 'errFd' : 'reqFd';
      lease[slot]?.close();
      lease[slot] = dataType === VFIO_IRQ_SET_DATA_EVENTFD ? (fds[0] ?? null) : null;
      fds.length = 0; // ownership moved to the lease
      return;
    }
    if (req.index !== VFIO_PCI_MSIX_IRQ_INDEX)
      throw new VfioError('EINVAL', `irq index ${req.index} has no vectors in this lease`);
    const vectors = lease.resources.vectors;
    // DATA_NONE with count 0: disable every vector of the index (VFIO semantics).
    const disableAll = dataType === VFIO_IRQ_SET_DATA_NONE;
    const first = disableAll ? 0 : req.start;
    const count = disableAll ? vectors.length : req.count;
    const physicalIndex = lease.resources.irqIndex ?? VFIO_PCI_MSIX_IRQ_INDEX;
    if (physicalIndex === VFIO_PCI_INTX_IRQ_INDEX && (await automasked(table))) {
      return await relayIntx(table, lease, first, count, disableAll ? [] : fds, req.issued);
    }
    for (let i = 0; i < count; i++) {
      const physical = vectors[first + i]!;
      const fd = disableAll ? null : (fds[i] ?? null);
      // The client's eventfd goes straight to the device: the broker is not on the interrupt path.
      const wired = leaseDeviceCall(table, lease, 'SET_IRQS', `MSI-X vector ${first + i}`, () =>
        table.device.setIrqs(physicalIndex, physical, [fd]),
      );
      if (i === count - 1) req.issued?.(); // the last device call is sent (see mapForLease)
      await wired;
      if (fd && !lease.live) {
        // Reclaim started while we wired it: take it back rather than leave a vector aimed at this client.
        await table.device.setIrqs(physicalIndex, physical, [null]);
        throw new VfioError('ENODEV', `lease ${lease.id} is ${lease.state}`);
      }
    }
  } finally {
    for (const fd of fds) fd?.close();
  }
}

/** Whether the device masks its INTx at each interrupt and waits to be told to unmask it (vfio-pci). */
async function automasked(table: LeaseTable): Promise<boolean> {
  return (await table.device.irqAutomasked?.(VFIO_PCI_INTX_IRQ_INDEX).catch(() => false)) ?? false;
}

/**
 * The lease's vector 0 on a device INTx line that automasks: the broker relays it (lease-intx.ts). No eventfd
 * in `fds` unwires it; one is taken out of `fds` once the relay owns it.
 */
async function relayIntx(
  table: LeaseTable,
  lease: Lease,
  first: number,
  count: number,
  fds: (Fd | null)[],
  issued: (() => void) | undefined,
): Promise<void> {
  const fd = fds[0] ?? null;
  if (first !== 0 || count !== 1)
    throw new VfioError('EINVAL', `the lease has one vector (0, the device's INTx): not ${first}+${count}`);
  // SET_IRQS requests are pipelined: a later one may start before this one is answered. They reach the device
  // in order, so the latest wiring is the one the line signals: an earlier one finishing after it stands down.
  const generation = ++lease.intxGeneration;
  lease.intx?.close();
  lease.intx = null;
  if (!fd) {
    const unwired = leaseDeviceCall(table, lease, 'SET_IRQS', 'INTx', () =>
      table.device.setIrqs(VFIO_PCI_INTX_IRQ_INDEX, 0, [null]),
    );
    issued?.();
    return unwired;
  }
  const log = (m: string) => table.log(`lease ${lease.id}: ${m}`);
  const wiring = leaseDeviceCall(table, lease, 'SET_IRQS', 'INTx', () =>
    IntxRelay.wire(table.device as IntxDevice, VFIO_PCI_INTX_IRQ_INDEX, fd, log),
  );
  fds.length = 0; // the relay owns the client's eventfd (and closes it on failure)
  issued?.();
  const relay = await wiring;
  if (lease.intxGeneration !== generation) {
    relay.close(); // a later SET_IRQS of the vector replaced this wiring on the device
    return;
  }
  if (!lease.live) {
    // Reclaim started while we wired it: take it back rather than leave the line aimed at this client.
    await table.device.setIrqs(VFIO_PCI_INTX_IRQ_INDEX, 0, [null]).catch(() => undefined);
    relay.close();
    throw new VfioError('ENODEV', `lease ${lease.id} is ${lease.state}`);
  }
  lease.intx = relay;
}
