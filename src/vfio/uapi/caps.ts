// VFIO capability chains: the linked list of `vfio_info_cap_header`-led
// records that follows vfio_device_info, vfio_region_info and
// vfio_iommu_type1_info. Each header's `next` is an offset from the start of
// the info buffer (0 ends the chain); the info struct's `cap_offset` points at
// the first. Pure encode/decode helpers, shared by clients (parse what the
// kernel or a vfio-user server returned) and servers (build it).
import type { Field, StructLayout, StructValue } from '../struct.js';
import {
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  vfio_info_cap_header,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from './vfio.js';
import {
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iommu_type1_info_dma_avail,
  vfio_iova_range,
} from './vfio-iommu.js';

/** One capability found in a chain. `bytes` starts at its header and runs to the next capability (or the buffer's end). */
export interface ParsedCap {
  id: number;
  version: number;
  /** Where the header sits in the buffer that was parsed. */
  offset: number;
  bytes: Uint8Array;
}

/** A capability to put in a chain: `bytes` includes room for the 8-byte header, which buildCapChain fills in. */
export interface CapSpec {
  id: number;
  version: number;
  bytes: Uint8Array;
}

const HDR = vfio_info_cap_header.size;
/** The kernel pads each capability to 8 bytes so the next one's u64 fields stay aligned. */
const CAP_ALIGN = 8;

function walk(buf: Uint8Array, first: number): ParsedCap[] {
  const seen = new Set<number>();
  const found: { id: number; version: number; offset: number }[] = [];
  let off = first;
  while (true) {
    if (seen.has(off)) throw new RangeError(`capability chain loops back to offset ${off}`);
    if (off + HDR > buf.byteLength) {
      throw new RangeError(`capability at offset ${off} overruns the ${buf.byteLength}-byte buffer`);
    }
    seen.add(off);
    const h = vfio_info_cap_header.decode(buf, off);
    found.push({ id: h.id, version: h.version, offset: off });
    if (h.next === 0) break;
    off = h.next;
  }
  // A capability's extent is up to the nearest capability placed after it.
  const starts = [...seen].sort((a, b) => a - b);
  for (let i = 1; i < starts.length; i++) {
    if ((starts[i] as number) - (starts[i - 1] as number) < HDR) {
      throw new RangeError(`capabilities at offsets ${starts[i - 1]} and ${starts[i]} overlap`);
    }
  }
  return found.map((c) => {
    const end = starts.find((s) => s > c.offset) ?? buf.byteLength;
    // Built whole, not `{ ...c, bytes }`: on Node 20 (V8 11.3) a spread followed by a new property makes a new
    // hidden class nearly every call (docs/performance-history.md, issue 16, twenty-fourth pass §4).
    return { id: c.id, version: c.version, offset: c.offset, bytes: buf.subarray(c.offset, end) };
  });
}

/**
 * Walk a chain inside an info buffer (pass the buffer trimmed to `argsz`).
 * `firstOffset` is the info struct's `cap_offset`; 0 means no capabilities.
 * Throws RangeError on a chain that overruns, loops or overlaps.
 */
export function parseCapChain(buf: Uint8Array, firstOffset: number): ParsedCap[] {
  return firstOffset === 0 ? [] : walk(buf, firstOffset);
}

/**
 * Walk a chain built with base 0 (first capability at offset 0, as
 * RegionDescription.caps carries it). An empty buffer is an empty chain.
 */
export function parseCapBlob(chain: Uint8Array): ParsedCap[] {
  return chain.byteLength === 0 ? [] : walk(chain, 0);
}

/** The first capability with this id, or undefined. */
export function findCap(caps: readonly ParsedCap[], id: number): ParsedCap | undefined {
  return caps.find((c) => c.id === id);
}

/**
 * Lay out capabilities back to back, each padded to 8 bytes, with headers
 * linked in order. `base` is where the chain will sit in the final buffer
 * (e.g. sizeof(vfio_region_info), which is then also the `cap_offset`); with
 * base 0 the result is a position-independent blob for rebaseCapChain.
 * The inputs are not modified.
 */
export function buildCapChain(caps: readonly CapSpec[], base = 0): Uint8Array {
  if (base % CAP_ALIGN !== 0) throw new RangeError(`capability chain base ${base} is not 8-byte aligned`);
  const sizes = caps.map((c) => {
    if (c.bytes.byteLength < HDR) {
      throw new RangeError(`capability ${c.id}: ${c.bytes.byteLength} bytes, less than its 8-byte header`);
    }
    return Math.ceil(c.bytes.byteLength / CAP_ALIGN) * CAP_ALIGN;
  });
  const out = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
  let pos = 0;
  caps.forEach((c, i) => {
    const size = sizes[i] as number;
    out.set(c.bytes, pos);
    const next = i === caps.length - 1 ? 0 : base + pos + size;
    vfio_info_cap_header.encode({ id: c.id, version: c.version, next }, out, pos);
    pos += size;
  });
  return out;
}

/** Copy a base-0 chain and shift every link by `base`, for placing it at that offset in an info buffer. */
export function rebaseCapChain(chain: Uint8Array, base: number): Uint8Array {
  const out = chain.slice();
  for (const c of parseCapBlob(chain)) {
    const h = vfio_info_cap_header.decode(out, c.offset);
    if (h.next !== 0) vfio_info_cap_header.encode({ ...h, next: h.next + base }, out, c.offset);
  }
  return out;
}

// --- specific capabilities ---

export interface Range64 {
  offset: bigint;
  size: bigint;
}

/** VFIO_REGION_INFO_CAP_SPARSE_MMAP: the parts of a region that may be mmapped. */
export function sparseMmapCap(areas: readonly Range64[]): CapSpec {
  const fixed = vfio_region_info_cap_sparse_mmap.size;
  const bytes = new Uint8Array(fixed + areas.length * vfio_region_sparse_mmap_area.size);
  vfio_region_info_cap_sparse_mmap.encode({ nr_areas: areas.length }, bytes);
  encodeArray(areas, vfio_region_sparse_mmap_area, bytes, fixed);
  return { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, bytes };
}

export function decodeSparseMmapCap(bytes: Uint8Array): Range64[] {
  const { nr_areas } = vfio_region_info_cap_sparse_mmap.decode(bytes);
  return decodeArray(bytes, vfio_region_info_cap_sparse_mmap.size, nr_areas, vfio_region_sparse_mmap_area);
}

/** VFIO_REGION_INFO_CAP_TYPE: a device-specific region's type and subtype. */
export function regionTypeCap(type: number, subtype: number): CapSpec {
  return {
    id: VFIO_REGION_INFO_CAP_TYPE,
    version: 1,
    bytes: vfio_region_info_cap_type.encode({ type, subtype }),
  };
}

export function decodeRegionTypeCap(bytes: Uint8Array): { type: number; subtype: number } {
  const { type, subtype } = vfio_region_info_cap_type.decode(bytes);
  return { type, subtype };
}

/** Inclusive IOVA range (`end` is the last usable address), as vfio_iova_range. */
export interface IovaRange {
  start: bigint;
  end: bigint;
}

/** VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: the IOVA ranges a container accepts. */
export function iovaRangeCap(ranges: readonly IovaRange[]): CapSpec {
  const fixed = vfio_iommu_type1_info_cap_iova_range.size;
  const bytes = new Uint8Array(fixed + ranges.length * vfio_iova_range.size);
  vfio_iommu_type1_info_cap_iova_range.encode({ nr_iovas: ranges.length }, bytes);
  encodeArray(ranges, vfio_iova_range, bytes, fixed);
  return { id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: 1, bytes };
}

export function decodeIovaRangeCap(bytes: Uint8Array): IovaRange[] {
  const { nr_iovas } = vfio_iommu_type1_info_cap_iova_range.decode(bytes);
  return decodeArray(bytes, vfio_iommu_type1_info_cap_iova_range.size, nr_iovas, vfio_iova_range);
}

/** VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: how many more DMA mappings the container takes. */
export function dmaAvailCap(avail: number): CapSpec {
  return {
    id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    version: 1,
    bytes: vfio_iommu_type1_info_dma_avail.encode({ avail }),
  };
}

export function decodeDmaAvailCap(bytes: Uint8Array): number {
  return vfio_iommu_type1_info_dma_avail.decode(bytes).avail;
}

/** Decode `count` elements of `layout` packed from `start`, refusing a count the bytes cannot hold. */
export function decodeArray<F extends readonly Field[]>(
  bytes: Uint8Array,
  start: number,
  count: number,
  layout: StructLayout<F>,
): StructValue<F>[] {
  const need = start + count * layout.size;
  if (need > bytes.byteLength) {
    throw new RangeError(`${count} × ${layout.name} need ${need} bytes, have ${bytes.byteLength}`);
  }
  return Array.from({ length: count }, (_, i) => layout.decode(bytes, start + i * layout.size));
}

/** Encode `items` as consecutive `layout` elements into `out` from `start`. */
export function encodeArray<F extends readonly Field[]>(
  items: readonly Partial<StructValue<F>>[],
  layout: StructLayout<F>,
  out: Uint8Array,
  start: number,
): void {
  for (const [i, item] of items.entries()) layout.encode(item, out, start + i * layout.size);
}
