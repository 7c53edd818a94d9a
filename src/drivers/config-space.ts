// The virtual PCI config space of a lease device: the physical device's ids,
// a type-0 header, and memory BARs sized to the leased slices (so a stock
// vfio-user client sizes them as it would real BARs). No capabilities.

export interface LeaseConfigSpec {
  vendor: number;
  device: number;
  revision: number;
  classCode: number;
  subsystemVendor: number;
  subsystem: number;
  /** BAR index -> size in bytes (a power of two, at least 16). */
  bars: Record<number, bigint>;
}

export const CONFIG_SPACE_SIZE = 256;

export function buildLeaseConfigSpace(spec: LeaseConfigSpec): Uint8Array {
  const cs = new Uint8Array(CONFIG_SPACE_SIZE);
  const dv = new DataView(cs.buffer);
  dv.setUint16(0x00, spec.vendor, true);
  dv.setUint16(0x02, spec.device, true);
  dv.setUint16(0x04, 0x0002, true); // command: memory space enabled
  dv.setUint32(0x08, ((spec.classCode << 8) | spec.revision) >>> 0, true);
  dv.setUint8(0x0e, 0); // header type 0
  dv.setUint16(0x2c, spec.subsystemVendor, true);
  dv.setUint16(0x2e, spec.subsystem, true);
  for (const [i, size] of Object.entries(spec.bars)) {
    // 32-bit, non-prefetchable memory BAR at address 0; sizing is emulated by the session.
    if (size > 0n) dv.setUint32(0x10 + Number(i) * 4, 0, true);
  }
  return cs;
}

/** The value a BAR reads back after all-ones was written to it (size mask, memory type bits 0). */
export function barSizeMask(size: bigint): number {
  return Number(~(size - 1n) & 0xffff_fff0n) >>> 0;
}
