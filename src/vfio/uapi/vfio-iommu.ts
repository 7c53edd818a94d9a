// VFIO UAPI (include/uapi/linux/vfio.h), the IOMMU side: the legacy
// container/group path (type1 IOMMU) and the cdev path that binds a device to
// an iommufd. Field names and order are the kernel's; ioctl numbers are in
// ioctl.ts. Checked against the kernel's headers by test/vfio/uapi-layout.test.ts.
import { struct } from '../struct.js';

// --- VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU arguments ---
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_SPAPR_TCE_IOMMU = 2;
export const VFIO_TYPE1v2_IOMMU = 3;
/** Extension: the IOMMU enforces cache coherence for DMA. */
export const VFIO_DMA_CC_IOMMU = 4;
export const VFIO_EEH = 5;
export const VFIO_SPAPR_TCE_v2_IOMMU = 7;
/** No IOMMU at all (unsafe mode; requires enable_unsafe_noiommu_mode). */
export const VFIO_NOIOMMU_IOMMU = 8;
/** Extension: VFIO_DMA_UNMAP_FLAG_ALL is supported. */
export const VFIO_UNMAP_ALL = 9;
/** Extension: VFIO_DMA_{MAP,UNMAP}_FLAG_VADDR are supported. */
export const VFIO_UPDATE_VADDR = 10;

// --- group (legacy path: /dev/vfio/<group>) ---
export const vfio_group_status = struct('vfio_group_status', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
] as const);
/** Every device in the group is bound to a VFIO driver (or none at all). */
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

// --- type1 IOMMU info (VFIO_IOMMU_GET_INFO on the container) ---
export const vfio_iommu_type1_info = struct('vfio_iommu_type1_info', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['iova_pgsizes', 'u64'],
  ['cap_offset', 'u32'],
  ['pad', 'u32'],
] as const);
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;

export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
/** Inclusive range: `end` is the last usable IOVA. */
export const vfio_iova_range = struct('vfio_iova_range', [
  ['start', 'u64'],
  ['end', 'u64'],
] as const);
/** Followed by nr_iovas × vfio_iova_range. */
export const vfio_iommu_type1_info_cap_iova_range = struct('vfio_iommu_type1_info_cap_iova_range', [
  ['header', { bytes: 8 }],
  ['nr_iovas', 'u32'],
  ['reserved', 'u32'],
] as const);

export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const vfio_iommu_type1_info_cap_migration = struct('vfio_iommu_type1_info_cap_migration', [
  ['header', { bytes: 8 }],
  ['flags', 'u32'],
  ['pgsize_bitmap', 'u64'],
  ['max_dirty_bitmap_size', 'u64'],
] as const);

/** How many more DMA mappings the container accepts (dma_entry_limit minus current). */
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
export const vfio_iommu_type1_info_dma_avail = struct('vfio_iommu_type1_info_dma_avail', [
  ['header', { bytes: 8 }],
  ['avail', 'u32'],
] as const);

// --- type1 DMA map / unmap ---
export const vfio_iommu_type1_dma_map = struct('vfio_iommu_type1_dma_map', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['vaddr', 'u64'],
  ['iova', 'u64'],
  ['size', 'u64'],
] as const);
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;

/** Followed by `data[]` (a vfio_bitmap when GET_DIRTY_BITMAP is set). */
export const vfio_iommu_type1_dma_unmap = struct('vfio_iommu_type1_dma_unmap', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['iova', 'u64'],
  ['size', 'u64'],
] as const);
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
/** Unmap everything; iova and size must be 0. */
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;

// --- cdev path (/dev/vfio/devices/vfioX) bound to an iommufd ---
export const vfio_device_bind_iommufd = struct('vfio_device_bind_iommufd', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['iommufd', 's32'],
  ['out_devid', 'u32'],
  ['token_uuid_ptr', 'u64'],
] as const);
/** token_uuid_ptr points at a 16-byte VF token UUID. */
export const VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0;

export const vfio_device_attach_iommufd_pt = struct('vfio_device_attach_iommufd_pt', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['pt_id', 'u32'],
  ['pasid', 'u32'],
] as const);
export const VFIO_DEVICE_ATTACH_PASID = 1 << 0;

export const vfio_device_detach_iommufd_pt = struct('vfio_device_detach_iommufd_pt', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['pasid', 'u32'],
] as const);
export const VFIO_DEVICE_DETACH_PASID = 1 << 0;
