// Capability chains of the lease device's regions (base-0 blobs, placed by
// the vfio-user server after vfio_region_info).

import { buildCapChain, regionTypeCap, sparseMmapCap } from '../vfio/uapi/caps.js';

/**
 * The devlease info region's type: VFIO_REGION_TYPE_PCI_VENDOR_TYPE with
 * vendor 0xffff (never a real PCI vendor, so it cannot collide with one) and
 * subtype 'dl'. Documented in docs/PROTOCOL.md.
 */
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 0x8000_0000;
export const DEVLEASE_INFO_REGION_TYPE = (VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0xffff) >>> 0;
export const DEVLEASE_INFO_REGION_SUBTYPE = 0x646c;

export function infoRegionCaps(): Uint8Array {
  return buildCapChain([regionTypeCap(DEVLEASE_INFO_REGION_TYPE, DEVLEASE_INFO_REGION_SUBTYPE)]);
}

/** A mappable slice region (one with a slice unit) is mmap-able as a whole through its own fd. */
export function sliceRegionCaps(size: bigint): Uint8Array {
  return buildCapChain([sparseMmapCap([{ offset: 0n, size }])]);
}
