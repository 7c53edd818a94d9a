// Can a client map a dma-buf of a BAR range? The kernel exports BAR ranges as
// dma-bufs (VFIO_DEVICE_FEATURE_DMA_BUF, 11) but, as of 7.3, their ops have
// no .mmap: mmap fails with EINVAL. The series that adds it ("vfio/pci: Add
// mmap() for DMABUFs") is not merged. When a kernel has it, a per-slice
// dma-buf fd is an enforced slice (the kernel revokes it); until then slices
// are handed out audited (src/broker/audit-scan). This probe asks the kernel
// at start, with one page of the first mappable BAR, and `devlease status`
// shows the answer. Every VFIO_DEVICE_FEATURE the kernel device sends goes
// through deviceFeature() here: they are all about dma-buf.

import { Fd } from '../../sys/fd.js';
import { native } from '../../sys/native.js';
import {
  encodeDeviceFeature,
  encodeDmaBufPayload,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_REGION_INFO_FLAG_MMAP,
} from '../../vfio/uapi/index.js';
import type { DeviceRegion } from '../device.js';
import type { DeviceIoctl } from './regions.js';
import { codedError, type KernelSys } from './sys.js';

export interface DmaBufMmapProbe {
  /** 'yes': a one-page dma-buf of a BAR mapped; 'no': it did not (errno in `reason`); 'untested': no way to ask. */
  mmap: 'yes' | 'no' | 'untested';
  reason: string;
}

/** VFIO_DEVICE_FEATURE on the device's fd, through its ioctl. */
export function deviceFeature(ioctl: DeviceIoctl, flags: number, data?: Uint8Array): number {
  const feature = flags & VFIO_DEVICE_FEATURE_MASK;
  // Feature 13 is devlease's revoke over vfio-user only; in the kernel it is s390's ZPCI_ERROR.
  if (feature === VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE) {
    throw codedError('ENOTSUP', 'feature 13 is never sent to a kernel device (it is ZPCI_ERROR there)');
  }
  return ioctl(`VFIO_DEVICE_FEATURE(${feature})`, VFIO_DEVICE_FEATURE, encodeDeviceFeature(flags, data));
}

/** Whether the kernel exports the device's BAR ranges as dma-buf fds: feature 11 answers a PROBE of GET. */
export function exportsDmaBuf(ioctl: DeviceIoctl): boolean {
  try {
    deviceFeature(ioctl, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF);
    return true;
  } catch {
    return false;
  }
}

/** The device as the probe of its BARs sees it. */
export interface ProbedDevice {
  dmaBuf: boolean;
  numRegions: number;
  region(index: number): Promise<DeviceRegion>;
}

/** probeDmaBufMmap on the first BAR (regions 0..5) with a mappable page; 'no' when the kernel exports none. */
export async function probeBarDmaBufMmap(
  sys: KernelSys,
  dev: ProbedDevice,
  ioctl: DeviceIoctl,
): Promise<DmaBufMmapProbe> {
  if (!dev.dmaBuf) return { mmap: 'no', reason: 'the kernel exports no dma-buf of BAR ranges (feature 11)' };
  let bar: DeviceRegion | null = null;
  for (let i = 0; i < Math.min(dev.numRegions, 6) && !bar; i++) {
    const r = await dev.region(i).catch(() => null);
    if (r && r.size >= 4096n && r.flags & VFIO_REGION_INFO_FLAG_MMAP) bar = r;
  }
  return probeDmaBufMmap(sys, bar, (flags, data) => deviceFeature(ioctl, flags, data));
}

/**
 * Export one page of `bar` as a dma-buf through `feature` (the device's VFIO_DEVICE_FEATURE call, which returns
 * the new fd) and try to mmap it. Everything made is closed again.
 */
export function probeDmaBufMmap(
  sys: KernelSys,
  bar: DeviceRegion | null,
  feature: (flags: number, data: Uint8Array) => number,
): DmaBufMmapProbe {
  if (!bar) return { mmap: 'untested', reason: 'the device has no mappable BAR to export a page of' };
  const { O_RDWR = 2, O_CLOEXEC = 0o2000000 } = native.constants as Record<string, number>;
  let fd: Fd;
  try {
    const n = feature(
      VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
      encodeDmaBufPayload({
        region_index: bar.index,
        open_flags: O_RDWR | O_CLOEXEC,
        ranges: [{ offset: 0n, length: 4096n }],
      }),
    );
    if (n < 3) return { mmap: 'untested', reason: `the export returned ${n}, not a new fd` };
    fd = new Fd(n);
  } catch (err) {
    const e = err as { code?: string };
    return { mmap: 'untested', reason: `exporting a page of BAR ${bar.index} failed (${e.code ?? 'error'})` };
  }
  try {
    const m = sys.mmap(fd, 4096, 0n, 'rw');
    m.unmap();
    return {
      mmap: 'yes',
      reason: `a one-page dma-buf of BAR ${bar.index} mapped: per-slice dma-buf fds could be enforced slices`,
    };
  } catch (err) {
    const e = err as { code?: string };
    return {
      mmap: 'no',
      reason: `mmap of a one-page dma-buf of BAR ${bar.index}: ${e.code ?? 'error'} (the kernel's dma-buf of a VFIO BAR has no mmap; slices are audited)`,
    };
  } finally {
    fd.close();
  }
}
