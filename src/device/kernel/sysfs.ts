// What sysfs says about a PCI device before any VFIO node is opened: which
// driver holds it, its vfio cdev (vfio-dev/vfioN, kernels with
// CONFIG_VFIO_DEVICE_CDEV) and its IOMMU group (the legacy path's node).

import { readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { codedError } from './sys.js';

export interface PciSysfsInfo {
  /** Canonical address, DDDD:BB:DD.F. */
  bdf: string;
  /** The bound driver's name, or null when none. */
  driver: string | null;
  /** `vfioN` under vfio-dev/, or why there is none. */
  cdev: { name: string } | { missing: string };
  /** The IOMMU group number, or why there is none. */
  group: { id: number } | { missing: string };
}

/** Accepts DDDD:BB:DD.F or BB:DD.F (domain 0000); lower-cases. Throws EINVAL otherwise. */
export function canonicalBdf(address: string): string {
  const a = address.trim().toLowerCase();
  const full = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/;
  if (full.test(a)) return a;
  if (full.test(`0000:${a}`)) return `0000:${a}`;
  throw codedError('EINVAL', `'${address}' is not a PCI address (DDDD:BB:DD.F, e.g. 0000:00:04.0)`);
}

function errCode(err: unknown): string {
  return (err as { code?: string }).code ?? 'EIO';
}

export function readPciSysfs(address: string, sysfsRoot = '/sys'): PciSysfsInfo {
  const bdf = canonicalBdf(address);
  const dir = join(sysfsRoot, 'bus/pci/devices', bdf);
  try {
    readdirSync(dir);
  } catch (err) {
    throw codedError(
      errCode(err) === 'ENOENT' ? 'ENODEV' : errCode(err),
      `no PCI device ${bdf} (${dir}: ${errCode(err)})`,
    );
  }
  let driver: string | null = null;
  try {
    driver = basename(readlinkSync(join(dir, 'driver')));
  } catch {
    // not bound to any driver
  }
  let cdev: PciSysfsInfo['cdev'];
  try {
    const names = readdirSync(join(dir, 'vfio-dev')).filter((n) => /^vfio\d+$/.test(n));
    cdev = names[0] ? { name: names[0] } : { missing: `${dir}/vfio-dev lists no vfioN` };
  } catch (err) {
    cdev = {
      missing:
        errCode(err) === 'ENOENT'
          ? `${dir}/vfio-dev does not exist (kernel without CONFIG_VFIO_DEVICE_CDEV, or ${bdf} not bound to a vfio driver)`
          : `${dir}/vfio-dev: ${errCode(err)}`,
    };
  }
  let group: PciSysfsInfo['group'];
  try {
    const id = Number(basename(readlinkSync(join(dir, 'iommu_group'))));
    group = Number.isInteger(id) ? { id } : { missing: `${dir}/iommu_group does not name a number` };
  } catch (err) {
    group = {
      missing:
        errCode(err) === 'ENOENT'
          ? `${bdf} has no IOMMU group (no IOMMU, or the IOMMU is off: intel_iommu=on / amd_iommu=on)`
          : `${dir}/iommu_group: ${errCode(err)}`,
    };
  }
  return { bdf, driver, cdev, group };
}

/** A device can be driven through VFIO only when a vfio driver (vfio-pci or a variant) holds it. */
export function checkVfioDriver(info: PciSysfsInfo): void {
  if (info.driver?.includes('vfio')) return;
  const how = `echo vfio-pci > /sys/bus/pci/devices/${info.bdf}/driver_override; echo ${info.bdf} > /sys/bus/pci/drivers_probe`;
  throw codedError(
    'ENODEV',
    info.driver
      ? `${info.bdf} is bound to '${info.driver}', not to vfio-pci: unbind it, then ${how}`
      : `${info.bdf} is bound to no driver: ${how}`,
  );
}
