// Kernel VFIO backend entry point (iommufd + cdev preferred, group + type1 fallback).
import type { Device } from '../device.js';

export async function openKernelDevice(opts: { bdf: string }): Promise<Device> {
  throw Object.assign(
    new Error(`kernel VFIO backend for ${opts.bdf} is not built yet (see issue: kernel VFIO backend)`),
    {
      code: 'ENOSYS',
    },
  );
}
