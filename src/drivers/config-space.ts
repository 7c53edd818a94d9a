// The virtual PCI config space of a lease device: the physical device's ids,
// a type-0 header, and BARs that mirror the physical BARs' type (I/O or
// memory, 32- or 64-bit, prefetchable) sized to the leased slices, so a
// stock vfio-user client sizes them as it would the real BARs. No
// capabilities.

import type { Device } from '../device/device.js';
import { PCI_BASE_ADDRESS_0 } from '../vfio/uapi/pci-regs.js';
import { VFIO_PCI_CONFIG_REGION_INDEX } from '../vfio/uapi/vfio.js';

export const CONFIG_SPACE_SIZE = 256;
export const PCI_NUM_BARS = 6;

const BAR_IO = 0x1;
const BAR_MEM_TYPE_MASK = 0x6;
const BAR_MEM_TYPE_64 = 0x4;
const BAR_MEM_PREFETCH = 0x8;

/** What a BAR's read-only low bits say about it. */
export interface BarType {
  /** I/O space (bit 0); otherwise memory space. */
  io: boolean;
  /** Memory type 0b10 (bits 2:1): the next BAR register holds the upper 32 address bits. */
  is64: boolean;
  /** Memory, bit 3. */
  prefetchable: boolean;
}

export interface LeaseConfigSpec {
  vendor: number;
  device: number;
  revision: number;
  classCode: number;
  subsystemVendor: number;
  subsystem: number;
  /** BAR index -> the physical BAR's type (readBarTypes); sizes come from the lease's slices. */
  bars: Record<number, BarType>;
}

/** The type of a BAR from its (low) register value as the device reports it. */
export function barType(low: number): BarType {
  if (low & BAR_IO) return { io: true, is64: false, prefetchable: false };
  return {
    io: false,
    is64: (low & BAR_MEM_TYPE_MASK) === BAR_MEM_TYPE_64,
    prefetchable: (low & BAR_MEM_PREFETCH) !== 0,
  };
}

/** The read-only low bits a BAR of this type always reads back. */
export function barTypeBits(t: BarType): number {
  if (t.io) return BAR_IO;
  return (t.is64 ? BAR_MEM_TYPE_64 : 0) | (t.prefetchable ? BAR_MEM_PREFETCH : 0);
}

/**
 * The BAR types of the device's six BAR registers, read from its own config space. The register after a
 * 64-bit BAR is that BAR's upper half: null, as is a 64-bit type claimed by BAR5 (nothing above it).
 */
export async function readBarTypes(dev: Device): Promise<(BarType | null)[]> {
  const types: (BarType | null)[] = [];
  for (let i = 0; i < PCI_NUM_BARS; i++) {
    if (types[i - 1]?.is64) {
      types.push(null);
      continue;
    }
    const t = barType(await dev.read32(VFIO_PCI_CONFIG_REGION_INDEX, PCI_BASE_ADDRESS_0 + 4 * i));
    types.push(t.is64 && i === PCI_NUM_BARS - 1 ? { ...t, is64: false } : t);
  }
  return types;
}

/** `types[index]`, insisting it is a BAR of its own (not the upper half of a 64-bit BAR). */
export function barTypeAt(types: readonly (BarType | null)[], index: number): BarType {
  const t = types[index];
  if (!t) throw new Error(`BAR${index} is not a BAR of its own (the upper half of BAR${index - 1})`);
  return t;
}

/**
 * The lease's config space for a device that shows its own ids (vendor, device, class, subsystem as the
 * device reports them): what every driver but SA-1's (which names its ids from the datasheet) builds.
 */
export function leaseConfigSpaceOf(
  ids: Device['ids'],
  bars: Record<number, BarType>,
  revision = 0,
): Uint8Array {
  return buildLeaseConfigSpace({
    vendor: ids.vendor,
    device: ids.device,
    revision,
    classCode: ids.classCode,
    subsystemVendor: ids.subsystemVendor,
    subsystem: ids.subsystem,
    bars,
  });
}

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
  // Each BAR at address 0 with its type bits (a 64-bit BAR's upper half is 0); sizing is emulated by the session.
  for (const [i, t] of Object.entries(spec.bars))
    dv.setUint32(PCI_BASE_ADDRESS_0 + Number(i) * 4, barTypeBits(t), true);
  return cs;
}

/** One BAR register of a lease device: its BAR's type and size, and which half of it the register is. */
interface BarRegister {
  type: BarType;
  /** The decoded size: a power of two, at least 4 (I/O) or 16 (memory). */
  decode: bigint;
  upper: boolean;
}

/**
 * The BAR registers of a lease config space: the types its builder wrote, the sizes of the lease's regions
 * at those indexes (REGION_INFO's sizes). A BAR without a region reads 0 whatever is written.
 */
export class LeaseBars {
  readonly #regs: (BarRegister | null)[] = Array.from({ length: PCI_NUM_BARS }, () => null);

  constructor(config: Uint8Array, sizes: ReadonlyMap<number, bigint>) {
    const dv = new DataView(config.buffer, config.byteOffset, config.byteLength);
    for (let i = 0; i < PCI_NUM_BARS; i++) {
      if (this.#regs[i]) continue; // the upper half of the BAR below
      const size = sizes.get(i);
      if (size === undefined || size <= 0n) continue;
      const type = barType(dv.getUint32(PCI_BASE_ADDRESS_0 + 4 * i, true));
      const decode = decodeSize(type, size);
      this.#regs[i] = { type, decode, upper: false };
      if (type.is64 && i + 1 < PCI_NUM_BARS) this.#regs[i + 1] = { type, decode, upper: true };
    }
  }

  /**
   * What BAR register `index` reads after `value` was written to it, as a real BAR does: the address bits
   * the size leaves writable, and the type bits. So all-ones reads back the size mask (the upper register of a
   * 64-bit BAR: the upper half of it). The address is only a number here: nothing is decoded at it.
   */
  afterWrite(index: number, value: number): number {
    const r = this.#regs[index];
    if (!r) return 0;
    const mask = ~(r.decode - 1n);
    if (r.upper) return Number(BigInt(value >>> 0) & (mask >> 32n) & 0xffff_ffffn) >>> 0;
    const typeBits = barTypeBits(r.type);
    const lowBits = r.type.io ? 0x3n : 0xfn; // the type bits' place, never address
    const addr = BigInt(value >>> 0) & mask & 0xffff_ffffn & ~lowBits;
    return (Number(addr) | typeBits) >>> 0;
  }
}

/** A BAR's decoded size for a region of `size` bytes: the next power of two, at least 4 (I/O) or 16 (memory). */
export function decodeSize(type: BarType, size: bigint): bigint {
  let decode = type.io ? 4n : 16n;
  while (decode < size) decode <<= 1n;
  return decode;
}
