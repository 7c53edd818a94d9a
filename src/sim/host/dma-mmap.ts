// Mapping an owner's DMA_MAP fd for the device (datasheet rev 2 §7), with
// the errno the owner gets when mmap refuses. Guarded: if the backing
// shrinks later, the access that finds it gone completes as IOMMU_FAULT
// (iommu.ts), not as the zero pages the guard puts in its place.

import { ERRNO, type ErrnoName, VfioError } from '../../errors.js';
import type { Mapping } from '../../sys/index.js';
import type { DmaPlacement, Neighbours } from './dma-placement.js';

/** The mapping of `fd` for the device, placed next to `around` where it can be (dma-placement.ts). */
export function mapDmaFd(
  fd: number,
  m: { offset: number; size: number; write: boolean },
  placement: DmaPlacement,
  around: Neighbours,
): Mapping {
  try {
    return placement.map(fd, { length: m.size, offset: m.offset, prot: m.write ? 'rw' : 'r' }, around);
  } catch (err) {
    const code = (err as { code?: string }).code;
    // ENODEV: the file cannot be mapped at all (no memory behind it), as EBADF for a pipe; ENOMEM, EACCES, ...
    // as mmap said.
    const name = code === 'ENODEV' ? 'EBADF' : code && code in ERRNO ? (code as ErrnoName) : 'EINVAL';
    throw new VfioError(name, `the DMA_MAP fd cannot be mapped: ${(err as Error).message}`);
  }
}
