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

// Every lease's REGION_INFO answers with the same few chains: each is encoded once per broker, and every
// caller gets its own copy (a few dozen bytes), so nothing downstream can change the one kept.
const INFO_CAPS = buildCapChain([regionTypeCap(DEVLEASE_INFO_REGION_TYPE, DEVLEASE_INFO_REGION_SUBTYPE)]);
/** Slice sizes seen (a driver has a handful: a queue page, granule multiples); bounded all the same. */
const SLICE_CAPS_KEPT = 64;
const sliceCaps = new Map<bigint, Uint8Array>();

export function infoRegionCaps(): Uint8Array {
  return INFO_CAPS.slice();
}

/** A mappable slice region (one with a slice unit) is mmap-able as a whole through its own fd. */
export function sliceRegionCaps(size: bigint): Uint8Array {
  let chain = sliceCaps.get(size);
  if (!chain) {
    chain = buildCapChain([sparseMmapCap([{ offset: 0n, size }])]);
    if (sliceCaps.size < SLICE_CAPS_KEPT) sliceCaps.set(size, chain);
  }
  return chain.slice();
}
