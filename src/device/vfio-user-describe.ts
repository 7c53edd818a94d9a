// What a vfio-user connection says about the device behind it, asked once per connection (and again at a
// reconnect, which must find the same device): its region and irq counts, its PCI ids from config space, and
// whether it hands out slice fds and can revoke them (devlease's dma-buf features, probed).

import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_CONFIG_REGION_INDEX,
} from '../vfio/uapi/vfio.js';
import type { VfioUserClient } from '../vfio/user/client.js';
import type { Device } from './device.js';
import { readPciIds } from './pci-ids.js';

/** What a connection says about its device: counts, PCI ids, and whether slices can be mapped and revoked. */
export async function describe(
  client: VfioUserClient,
): Promise<Pick<Device, 'numRegions' | 'numIrqs' | 'ids' | 'capabilities'> & { resettable: boolean }> {
  const info = await client.deviceInfo();
  const ids = await readPciIds((off, n) => client.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, off, n));
  const probe = async (feature: number, dir: number) => {
    try {
      await client.feature({ flags: VFIO_DEVICE_FEATURE_PROBE | dir, feature });
      return true;
    } catch {
      return false;
    }
  };
  const mappable = await probe(VFIO_DEVICE_FEATURE_DMA_BUF, VFIO_DEVICE_FEATURE_GET);
  const revocable = mappable && (await probe(VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE, VFIO_DEVICE_FEATURE_SET));
  return {
    numRegions: info.num_regions,
    numIrqs: info.num_irqs,
    resettable: (info.flags & VFIO_DEVICE_FLAGS_RESET) !== 0,
    ids,
    capabilities: { mappableSlices: mappable, revocableSlices: revocable },
  };
}

const hex4 = (v: number) => v.toString(16).padStart(4, '0');
/** A device's PCI ids as one line, for the error when a reconnect finds another device. */
export const formatIds = (i: Device['ids']) =>
  `PCI ${hex4(i.vendor)}:${hex4(i.device)} (subsystem ${hex4(i.subsystemVendor)}:${hex4(i.subsystem)}, class 0x${i.classCode.toString(16).padStart(6, '0')})`;
