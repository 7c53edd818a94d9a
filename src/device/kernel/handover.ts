// A kernel device carried from one broker process to the next (a broker
// upgrade, src/broker/handover): the VFIO device fd, the iommufd + IOAS id or
// the container + group fds, the DMA map table and the region info travel;
// the new process re-reads what the kernel can tell (device info, ids,
// regions, IOVA ranges) and checks it against what it was told, and probes
// that every handed map is still there. Interrupts need nothing: the
// eventfds wired with VFIO_DEVICE_SET_IRQS stay wired in the kernel. The
// REQ and ERR eventfds travel too: the old broker leaves them unread during
// the transfer (holdSignals), and the new one watches them from its commit,
// so an error the kernel reports meanwhile (once) is heard by the broker
// that carries on.
//
// Until the upgrade commits the adopted device is not this process's to tear
// down (close() only closes its fds: unmapping or detaching would take the
// device from the old broker, which may yet roll back). takeOver() makes it
// this process's and moves the pinned-page accounting where the kernel can
// (docs/ARCHITECTURE.md, "Upgrading the broker"). The handover's format, and
// what builds it from the old broker's device, are device-upgrade.ts.

import { EventFd } from '../../sys/eventfd.js';
import type { Fd } from '../../sys/fd.js';
import { Type1Container } from './container.js';
import { KernelDevice } from './device.js';
import type { KernelDeviceHandover } from './device-upgrade.js';
import type { IommuDomain } from './domain.js';
import { IommufdIoas } from './iommufd.js';
import { codedError, type KernelSys, realSys } from './sys.js';

/** Rebuild the device from a handover; `take` hands over the fd of an index. Checks it still agrees. */
export async function adoptKernelDevice(
  h: KernelDeviceHandover,
  take: (i: number) => Fd,
  opts: { sys?: KernelSys; log?: (msg: string) => void } = {},
): Promise<KernelDevice> {
  const sys = opts.sys ?? realSys;
  const device = take(h.fd);
  const signals = new Map<number, EventFd>();
  let domain: IommuDomain;
  try {
    for (const s of h.signals ?? []) signals.set(s.index, EventFd.adopt(take(s.fd)));
    const d = h.domain;
    domain =
      d.kind === 'iommufd'
        ? IommufdIoas.adopt(sys, d, { iommufd: take(d.iommufd), device, deviceName: h.name })
        : Type1Container.adopt(sys, d, take(d.group), take(d.container));
  } catch (err) {
    device.close();
    for (const efd of signals.values()) efd.close();
    throw err;
  }
  const dev = await KernelDevice.create({
    sys,
    fd: device,
    name: h.name,
    domain,
    chosen: h.path.chosen,
    reason: 'carried over from the previous broker process (upgrade)',
    owned: false,
    signals,
    // The command register's memory and I/O decode bits (0..3); anything else is read again.
    ...(Number.isInteger(h.decode) && h.decode! >= 0 && h.decode! <= 3 ? { decode: h.decode! } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  });
  try {
    const was = JSON.stringify(h.ids);
    const is = JSON.stringify(dev.ids);
    if (was !== is) throw codedError('ENODEV', `the device's ids changed: ${was} then, ${is} now`);
    for (const r of h.regions) {
      const now = await dev.region(r.index);
      if (now.size !== r.size || now.offset !== r.offset || now.flags !== r.flags)
        throw codedError('ENODEV', `region ${r.index} of ${h.name} is not what the previous broker had`);
    }
  } catch (err) {
    await dev.close();
    throw err;
  }
  dev.path.reason = h.path.reason;
  dev.adoptIrqs(h.irqsEnabled);
  return dev;
}
