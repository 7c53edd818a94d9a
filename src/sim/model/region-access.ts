// The owner's REGION_READ / REGION_WRITE on the SA-1 model (datasheet §2): config space, BAR4 device memory
// by its segments, and the BAR0 / BAR2 registers 32 bits at a time. The access rules are regions.ts,
// shared with the simulator's front end; a BAR0 write's side effects are bar0.ts.

import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
} from '../../vfio/uapi/vfio.js';
import { bar0Read32, bar0Write32 } from './bar0.js';
import type { Sa1Device } from './device.js';
import { gather } from './memory.js';
import { checkRegionAccess } from './regions.js';

export function readRegion(
  dev: Sa1Device,
  now: number,
  index: number,
  offset: number,
  count: number,
): Uint8Array {
  checkRegionAccess(dev.options, index, offset, count);
  if (index === VFIO_PCI_CONFIG_REGION_INDEX) return dev.config.read(offset, count);
  if (index === VFIO_PCI_BAR4_REGION_INDEX) {
    return gather(dev.devmem.segments(offset, count), new Uint8Array(count));
  }
  const out = new Uint8Array(count);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < count; i += 4) dv.setUint32(i, register32(dev, now, index, offset + i), true);
  return out;
}

export function writeRegion(dev: Sa1Device, index: number, offset: number, data: Uint8Array): void {
  checkRegionAccess(dev.options, index, offset, data.length);
  if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
    dev.config.write(offset, data);
    return;
  }
  if (index === VFIO_PCI_BAR4_REGION_INDEX) {
    let at = 0;
    for (const s of dev.devmem.segments(offset, data.length)) {
      s.set(data.subarray(at, at + s.length));
      at += s.length;
    }
    return;
  }
  const dv = new DataView(data.buffer, data.byteOffset, data.length);
  for (let i = 0; i < data.length; i += 4) writeRegister32(dev, index, offset + i, dv.getUint32(i, true));
}

function register32(dev: Sa1Device, now: number, index: number, off: number): number {
  if (index === VFIO_PCI_BAR0_REGION_INDEX) return bar0Read32(dev.regs, off, dev.options.numQueues, now);
  const q = dev.queues[Math.floor(off / dev.options.queueStride)];
  return q ? q.pageRegister(off % dev.options.queueStride) : 0;
}

function writeRegister32(dev: Sa1Device, index: number, off: number, value: number): void {
  if (index === VFIO_PCI_BAR0_REGION_INDEX) {
    bar0Write32(dev, off, value);
    return;
  }
  const q = dev.queues[Math.floor(off / dev.options.queueStride)];
  q?.writePageRegister(off % dev.options.queueStride, value);
}
