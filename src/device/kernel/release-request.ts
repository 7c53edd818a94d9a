// The kernel asking for its device back. vfio-pci signals the eventfd wired to
// VFIO_PCI_REQ_IRQ_INDEX when the device is to be unbound or removed, and
// then waits, asking again every 10 s, until every fd of the device is
// closed. With no eventfd wired it only logs "No device request channel
// registered, blocked until released by user" and waits for the broker to
// exit: an operator's unbind hung for as long as the broker ran.
//
// The broker hears of it as the device's 'release-requested' event and lets
// the device go (device-loss.ts): every lease ends, the device fd closes,
// and the unbind completes.

import { EventFd } from '../../sys/eventfd.js';
import { VFIO_PCI_REQ_IRQ_INDEX } from '../../vfio/uapi/vfio.js';
import type { Device } from '../device.js';

export type RequestWiring = Pick<Device, 'irqCount' | 'setIrqs'>;

export const RELEASE_REQUESTED =
  'the kernel asks for the device back (VFIO device request: an unbind or a removal); it is released';

/**
 * Wire an eventfd to the device's REQ irq and call `requested` each time it fires: the kernel asks again every
 * 10 s while it waits, and a request that came before anyone listened is heard at the next (the broker takes
 * the first and ignores the rest). Returns the eventfd (the caller closes it after the device fd), or null
 * when the device has no REQ irq (not every VFIO bus driver offers one; vfio-pci does).
 */
export async function watchReleaseRequests(
  dev: RequestWiring,
  requested: () => void,
): Promise<EventFd | null> {
  if ((await dev.irqCount(VFIO_PCI_REQ_IRQ_INDEX).catch(() => 0)) < 1) return null;
  const efd = new EventFd();
  try {
    await dev.setIrqs(VFIO_PCI_REQ_IRQ_INDEX, 0, [efd.fd]);
  } catch (err) {
    efd.close();
    throw err;
  }
  efd.onReadable(() => requested());
  // The device's owner keeps the process alive; this watch alone must not.
  efd.unref();
  return efd;
}
