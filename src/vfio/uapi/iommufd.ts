// iommufd UAPI (include/uapi/linux/iommufd.h): the subset devlease uses to
// own I/O address spaces (IOAS) for devices bound through the VFIO cdev path.
// Field names and order are the kernel's; ioctl numbers are in ioctl.ts.
// Every call's first field is `size` (sizeof the struct, for extensibility).
import { struct } from '../struct.js';

export const iommu_destroy = struct('iommu_destroy', [
  ['size', 'u32'],
  ['id', 'u32'],
] as const);

/** flags must be 0. */
export const iommu_ioas_alloc = struct('iommu_ioas_alloc', [
  ['size', 'u32'],
  ['flags', 'u32'],
  ['out_ioas_id', 'u32'],
] as const);

/** Inclusive range: `last` is the last IOVA in it. */
export const iommu_iova_range = struct('iommu_iova_range', [
  ['start', 'u64'],
  ['last', 'u64'],
] as const);

/** allowed_iovas points at num_iovas × iommu_iova_range (user memory, filled in by the kernel). */
export const iommu_ioas_iova_ranges = struct('iommu_ioas_iova_ranges', [
  ['size', 'u32'],
  ['ioas_id', 'u32'],
  ['num_iovas', 'u32'],
  ['__reserved', 'u32'],
  ['allowed_iovas', 'u64'],
  ['out_iova_alignment', 'u64'],
] as const);

/** allowed_iovas points at num_iovas × iommu_iova_range (user memory, read by the kernel). */
export const iommu_ioas_allow_iovas = struct('iommu_ioas_allow_iovas', [
  ['size', 'u32'],
  ['ioas_id', 'u32'],
  ['num_iovas', 'u32'],
  ['__reserved', 'u32'],
  ['allowed_iovas', 'u64'],
] as const);

// enum iommufd_ioas_map_flags (IOAS_MAP, IOAS_MAP_FILE and IOAS_COPY).
export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;

export const iommu_ioas_map = struct('iommu_ioas_map', [
  ['size', 'u32'],
  ['flags', 'u32'],
  ['ioas_id', 'u32'],
  ['__reserved', 'u32'],
  ['user_va', 'u64'],
  ['length', 'u64'],
  ['iova', 'u64'],
] as const);

/** Map `length` bytes of a memfd (or a supported dma-buf) from file offset `start`. */
export const iommu_ioas_map_file = struct('iommu_ioas_map_file', [
  ['size', 'u32'],
  ['flags', 'u32'],
  ['ioas_id', 'u32'],
  ['fd', 's32'],
  ['start', 'u64'],
  ['length', 'u64'],
  ['iova', 'u64'],
] as const);

/**
 * IOMMU_IOAS_CHANGE_PROCESS: charges every map of every IOAS in the iommufd to the calling process (its mm's
 * pinned_vm, its user's locked_vm) and uncharges the old one. Only for MAP_FILE maps: EINVAL if any map is by
 * address, and on any failure nothing changes.
 */
export const iommu_ioas_change_process = struct('iommu_ioas_change_process', [
  ['size', 'u32'],
  ['__reserved', 'u32'],
] as const);

/** The source range must match exactly a range established by IOAS_MAP. */
export const iommu_ioas_copy = struct('iommu_ioas_copy', [
  ['size', 'u32'],
  ['flags', 'u32'],
  ['dst_ioas_id', 'u32'],
  ['src_ioas_id', 'u32'],
  ['length', 'u64'],
  ['dst_iova', 'u64'],
  ['src_iova', 'u64'],
] as const);

/** iova 0 and length UINT64_MAX unmap everything; length is written back with the bytes unmapped. */
export const iommu_ioas_unmap = struct('iommu_ioas_unmap', [
  ['size', 'u32'],
  ['ioas_id', 'u32'],
  ['iova', 'u64'],
  ['length', 'u64'],
] as const);

// enum iommufd_option / iommufd_option_ops.
/** Global (object_id 0), privileged: val64 0 = per-user RLIMIT_MEMLOCK accounting (default), 1 = per-process. */
export const IOMMU_OPTION_RLIMIT_MODE = 0;
/** Per-IOAS (object_id = IOAS ID): 1 combines contiguous pages (default), 0 maps everything at PAGE_SIZE. */
export const IOMMU_OPTION_HUGE_PAGES = 1;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;

export const iommu_option = struct('iommu_option', [
  ['size', 'u32'],
  ['option_id', 'u32'],
  ['op', 'u16'],
  ['__reserved', 'u16'],
  ['object_id', 'u32'],
  ['val64', 'u64'],
] as const);

// enum iommu_hw_info_type.
export const IOMMU_HW_INFO_TYPE_NONE = 0;
export const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
export const IOMMU_HW_INFO_TYPE_INTEL_VTD = 1;
export const IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2;
export const IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3;
export const IOMMU_HW_INFO_TYPE_AMD = 4;

// enum iommufd_hw_capabilities (out_capabilities bits).
export const IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0;
export const IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1;
export const IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2;
export const IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3;

// enum iommufd_hw_info_flags.
/** The union below is an input (in_data_type) naming the info type wanted. */
export const IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0;

/**
 * `out_data_type` shares its storage with the kernel's `in_data_type` (an
 * anonymous union): set it as the input type when flags has
 * IOMMU_HW_INFO_FLAG_INPUT_TYPE, read it as the output type otherwise.
 */
export const iommu_hw_info = struct('iommu_hw_info', [
  ['size', 'u32'],
  ['flags', 'u32'],
  ['dev_id', 'u32'],
  ['data_len', 'u32'],
  ['data_uptr', 'u64'],
  ['out_data_type', 'u32'],
  ['out_max_pasid_log2', 'u8'],
  ['__reserved', { array: 'u8', count: 3 }],
  ['out_capabilities', 'u64'],
] as const);
