// The SA-1 regions as the owner reaches them with REGION_READ/WRITE
// (datasheet §2): their sizes and the access rules, shared by the device
// model and the simulator's front end so both refuse the same accesses.

import { VfioError } from '../../errors.js';
import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
} from '../../vfio/uapi/vfio.js';
import { BAR0_SIZE, CONFIG_SPACE_SIZE, REGISTER_WIDTHS } from './datasheet.js';
import { bar2Size, type Sa1Options } from './options.js';

/** Bytes in region `index`, 0 for a region SA-1 does not implement. */
export function regionSize(options: Sa1Options, index: number): number {
  switch (index) {
    case VFIO_PCI_BAR0_REGION_INDEX:
      return BAR0_SIZE;
    case VFIO_PCI_BAR2_REGION_INDEX:
      return bar2Size(options);
    case VFIO_PCI_BAR4_REGION_INDEX:
      return options.devmemSize;
    case VFIO_PCI_CONFIG_REGION_INDEX:
      return CONFIG_SPACE_SIZE;
    default:
      return 0;
  }
}

/** Throws EINVAL unless [offset, +count) is inside the region and, in BAR0/BAR2, a 4- or 8-byte aligned access. */
export function checkRegionAccess(options: Sa1Options, index: number, offset: number, count: number): void {
  const size = regionSize(options, index);
  if (size === 0) throw new VfioError('EINVAL', `region ${index} is not implemented`);
  if (offset < 0 || count < 0 || offset + count > size) {
    throw new VfioError('EINVAL', `access [0x${offset.toString(16)}, +${count}) outside region ${index}`);
  }
  const isRegisterBar = index === VFIO_PCI_BAR0_REGION_INDEX || index === VFIO_PCI_BAR2_REGION_INDEX;
  if (isRegisterBar && !(REGISTER_WIDTHS.includes(count) && offset % count === 0)) {
    throw new VfioError(
      'EINVAL',
      `register access must be 4 or 8 bytes, naturally aligned (got ${count} at 0x${offset.toString(16)})`,
    );
  }
}
