// `devlease/driver`: what a driver of one's own may use. A driver module
// (named by the config's `device.driver`, docs/DRIVERS.md) imports from here
// and from nothing else of devlease: the Driver contract, the Device it
// drives, the errors it may throw, the bounded wait, the lease config-space
// builder, and the VFIO numbers it needs. Everything here is a stable part of
// the package; the rest of src/ is not.

export type { Device, DeviceRegion, DmaMapping, IovaRange, SparseArea, Transport } from '../device/device.js';
export { DevleaseError, VfioError } from '../errors.js';
export {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR1_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR3_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
} from '../vfio/uapi/vfio.js';
export {
  type BarType,
  barTypeAt,
  buildLeaseConfigSpace,
  CONFIG_SPACE_SIZE,
  type LeaseConfigSpec,
  leaseConfigSpaceOf,
  readBarTypes,
} from './config-space.js';
export type {
  DeviceFault,
  Driver,
  DriverConfig,
  DriverFactory,
  IovaView,
  IovaViewMode,
  Isolation,
  IsolationLevel,
  LeaseRequest,
  LeaseResources,
  SliceSpec,
} from './driver.js';
export { identityView } from './driver.js';
export { type PollOptions, PollTimeoutError, pollUntil } from './poll.js';
