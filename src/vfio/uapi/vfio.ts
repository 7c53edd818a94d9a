// VFIO UAPI (include/uapi/linux/vfio.h): structures used both by the kernel
// ioctls and as vfio-user payloads. Field names and order are the kernel's.
// This file holds the device side; the container/group/iommufd side is in
// vfio-iommu.ts, ioctl numbers in ioctl.ts. Checked against the kernel's
// headers by test/vfio/uapi-layout.test.ts.
import { struct } from '../struct.js';

export const VFIO_API_VERSION = 0;

// --- device info ---
export const vfio_device_info = struct('vfio_device_info', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['num_regions', 'u32'],
  ['num_irqs', 'u32'],
  ['cap_offset', 'u32'],
  ['pad', 'u32'],
] as const);
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
export const VFIO_DEVICE_FLAGS_CDX = 1 << 8;

// --- capability chain header (shared by region, device and iommu info) ---
export const vfio_info_cap_header = struct('vfio_info_cap_header', [
  ['id', 'u16'],
  ['version', 'u16'],
  ['next', 'u32'],
] as const);

// --- region info ---
export const vfio_region_info = struct('vfio_region_info', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['index', 'u32'],
  ['cap_offset', 'u32'],
  ['size', 'u64'],
  ['offset', 'u64'],
] as const);
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const vfio_region_sparse_mmap_area = struct('vfio_region_sparse_mmap_area', [
  ['offset', 'u64'],
  ['size', 'u64'],
] as const);
/** Followed by nr_areas × vfio_region_sparse_mmap_area. */
export const vfio_region_info_cap_sparse_mmap = struct('vfio_region_info_cap_sparse_mmap', [
  ['header', { bytes: 8 }],
  ['nr_areas', 'u32'],
  ['reserved', 'u32'],
] as const);

export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const vfio_region_info_cap_type = struct('vfio_region_info_cap_type', [
  ['header', { bytes: 8 }],
  ['type', 'u32'],
  ['subtype', 'u32'],
] as const);
/** Vendor-specific region types: this bit | the PCI vendor id (low 16 bits). */
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 0x80000000;
export const VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xffff;

/** Header-only capability: the MSI-X table in this region may be mmapped. */
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// PCI region and IRQ indexes (vfio-pci).
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_BAR3_REGION_INDEX = 3;
export const VFIO_PCI_BAR4_REGION_INDEX = 4;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

// --- irq info / set ---
export const vfio_irq_info = struct('vfio_irq_info', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['index', 'u32'],
  ['count', 'u32'],
] as const);
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

/** Followed by `data[]`: nothing (DATA_NONE), count bytes (DATA_BOOL) or count s32 fds (DATA_EVENTFD). */
export const vfio_irq_set = struct('vfio_irq_set', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
  ['index', 'u32'],
  ['start', 'u32'],
  ['count', 'u32'],
] as const);
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const VFIO_IRQ_SET_DATA_TYPE_MASK = 0x7;
export const VFIO_IRQ_SET_ACTION_TYPE_MASK = 0x38;

// --- device feature ---
/** Followed by feature-specific data. */
export const vfio_device_feature = struct('vfio_device_feature', [
  ['argsz', 'u32'],
  ['flags', 'u32'],
] as const);
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;

/** Feature 11 (Linux 6.19): export BAR ranges as dma-buf fds. */
export const VFIO_DEVICE_FEATURE_DMA_BUF = 11;
export const vfio_region_dma_range = struct('vfio_region_dma_range', [
  ['offset', 'u64'],
  ['length', 'u64'],
] as const);
/** Followed by nr_ranges × vfio_region_dma_range. */
export const vfio_device_feature_dma_buf = struct('vfio_device_feature_dma_buf', [
  ['region_index', 'u32'],
  ['open_flags', 'u32'],
  ['flags', 'u32'],
  ['nr_ranges', 'u32'],
] as const);
/**
 * Feature 13: permanent revoke of a slice fd. Upstream this sits on a
 * development branch (2026); the SA-1 simulator implements it with payload
 * `{ s32 fd_index }` naming one of the fds passed with the message.
 * Not in the kernel's header (the layout test excludes it). Beware: Linux 7.3's
 * vfio.h gives 13 to VFIO_DEVICE_FEATURE_ZPCI_ERROR (s390), so this number is a
 * devlease/SA-1 convention over vfio-user only, never to be sent to a kernel.
 */
export const VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE = 13;
export const vfio_device_feature_dma_buf_revoke = struct('vfio_device_feature_dma_buf_revoke', [
  ['fd_index', 's32'],
  ['flags', 'u32'],
] as const);
/**
 * Revoke flag: detach instead of fault. The device still moves the slice to fresh memory and lets go of the
 * old, but does not truncate the old: mappings other processes hold keep working on memory no device uses
 * any more (a stock client such as QEMU, which has no notice and would die of SIGBUS). Without it (and from
 * senders of the older 4-byte payload, which has no flags) every remaining mapping faults.
 */
export const DMA_BUF_REVOKE_FLAG_DETACH = 1;
