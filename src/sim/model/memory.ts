// Device memory access as lists of segments: a DMA range that spans several
// IOMMU maps (or several device-memory granules) becomes one view per piece,
// in address order. Payload operations walk segments with plain typed-array
// copies, so a COPY runs at memory bandwidth.

import { crc32c } from './crc32c.js';

/** Views over the bytes of one device-visible range, in address order. */
export type Segments = Uint8Array[];

export function segmentsLength(segs: Segments): number {
  let n = 0;
  for (const s of segs) n += s.length;
  return n;
}

/** Copy the bytes of `segs` into `out` (which must be as long as the segments together). */
export function gather(segs: Segments, out: Uint8Array): Uint8Array {
  let at = 0;
  for (const s of segs) {
    out.set(s, at);
    at += s.length;
  }
  return out;
}

/** Copy `data` into the bytes of `segs`. */
export function scatter(segs: Segments, data: Uint8Array): void {
  let at = 0;
  for (const s of segs) {
    s.set(data.subarray(at, at + s.length));
    at += s.length;
  }
}

/**
 * Copy src to dst, equal total lengths. Overlapping source and destination
 * behave like memcpy when they cross a segment boundary (unspecified); within
 * one segment pair TypedArray#set gives memmove semantics.
 */
export function copySegments(src: Segments, dst: Segments): void {
  let si = 0;
  let so = 0;
  let di = 0;
  let doff = 0;
  while (si < src.length && di < dst.length) {
    const s = src[si] as Uint8Array;
    const d = dst[di] as Uint8Array;
    const n = Math.min(s.length - so, d.length - doff);
    d.set(s.subarray(so, so + n), doff);
    so += n;
    doff += n;
    if (so === s.length) {
      si++;
      so = 0;
    }
    if (doff === d.length) {
      di++;
      doff = 0;
    }
  }
}

const FILL_BLOCK = 64 * 1024;

/** Fill with an 8-byte pattern repeated from the start of the range, the tail truncated. */
export function fillSegments(dst: Segments, pattern: Uint8Array): void {
  const block = new Uint8Array(FILL_BLOCK + 8);
  for (let i = 0; i < block.length; i++) block[i] = pattern[i % 8] as number;
  let pos = 0;
  for (const d of dst) {
    let off = 0;
    while (off < d.length) {
      const n = Math.min(FILL_BLOCK, d.length - off);
      const phase = pos % 8;
      d.set(block.subarray(phase, phase + n), off);
      off += n;
      pos += n;
    }
  }
}

export function crcSegments(src: Segments): number {
  let crc = 0;
  for (const s of src) crc = crc32c(s, crc);
  return crc;
}

/**
 * BAR4 as separately backed granules. `granules` is read at every access
 * because a revoke swaps one granule's backing for a fresh one.
 */
export class DeviceMemory {
  constructor(
    readonly size: number,
    readonly granule: number,
    private readonly granules: () => readonly Uint8Array[],
  ) {}

  /** Segments for [offset, offset+length); the caller checked bounds. */
  segments(offset: number, length: number): Segments {
    const out: Segments = [];
    const gs = this.granules();
    let off = offset;
    let left = length;
    while (left > 0) {
      const g = Math.floor(off / this.granule);
      const within = off - g * this.granule;
      const n = Math.min(left, this.granule - within);
      out.push((gs[g] as Uint8Array).subarray(within, within + n));
      off += n;
      left -= n;
    }
    return out;
  }

  contains(offset: number, length: number): boolean {
    return offset >= 0 && length >= 0 && offset + length <= this.size;
  }

  zero(): void {
    for (const g of this.granules()) g.fill(0);
  }
}
