// VFIO and iommufd UAPI: structure layouts, constants and ioctl numbers with
// the kernel's names, plus pure helpers for capability chains and the
// variable-length arguments; and the PCI config-space registers they reach.
export * from './caps.js';
export * from './ioctl.js';
export * from './iommufd.js';
export * from './payloads.js';
export * from './pci-regs.js';
export * from './vfio.js';
export * from './vfio-iommu.js';
