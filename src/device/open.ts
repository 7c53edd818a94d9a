// Open a device by its spec: `vfio-user:PATH` or `pci:DDDD:BB:DD.F`.

import type { Device } from './device.js';
import { VfioUserDevice } from './vfio-user-device.js';

export async function openDevice(spec: string): Promise<Device> {
  if (spec.startsWith('vfio-user:')) return VfioUserDevice.connect(spec.slice('vfio-user:'.length));
  if (spec.startsWith('pci:')) {
    const { openKernelDevice } = await import('./kernel/open.js');
    return openKernelDevice({ bdf: spec.slice('pci:'.length) });
  }
  throw new Error(`unknown device '${spec}': use vfio-user:PATH or pci:DDDD:BB:DD.F`);
}
