// Region-info capability chains (vfio-user.rst, "VFIO region capabilities";
// the layouts are the kernel's, from ../uapi/vfio.ts). The chain's `next`
// offsets are relative to the start of vfio_region_info; 0 ends the chain.
import {
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  vfio_info_cap_header,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from '../uapi/vfio.js';
import { ProtocolError } from './errors.js';

export interface SparseMmapArea {
  offset: bigint;
  size: bigint;
}

export interface RegionCaps {
  /** VFIO_REGION_INFO_CAP_SPARSE_MMAP areas, if the capability is present. */
  sparseMmap?: SparseMmapArea[];
  /** VFIO_REGION_INFO_CAP_TYPE, if present. */
  type?: { type: number; subtype: number };
  /** Every capability as (id, version, body bytes after the 8-byte header), unknown ones included. */
  all: { id: number; version: number; body: Uint8Array }[];
}

export type CapSpec =
  | { sparseMmap: SparseMmapArea[] }
  | { type: number; subtype: number }
  | { id: number; version: number; body: Uint8Array };

/**
 * Build a chain as the device model hands it over (RegionDescription.caps):
 * the first capability at 0 and every `next` relative to the chain's start.
 * The server rebases it behind vfio_region_info with rebaseCaps().
 */
export function buildRegionCaps(caps: CapSpec[]): Uint8Array {
  const parts: Uint8Array[] = caps.map((c) => {
    if ('sparseMmap' in c) {
      const body = new Uint8Array(
        vfio_region_info_cap_sparse_mmap.size + c.sparseMmap.length * vfio_region_sparse_mmap_area.size,
      );
      vfio_region_info_cap_sparse_mmap.encode({ nr_areas: c.sparseMmap.length }, body);
      c.sparseMmap.forEach((a, i) => {
        vfio_region_sparse_mmap_area.encode(
          a,
          body,
          vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size,
        );
      });
      vfio_info_cap_header.encode({ id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1 }, body);
      return body;
    }
    if ('subtype' in c) {
      const body = vfio_region_info_cap_type.encode({ type: c.type, subtype: c.subtype });
      vfio_info_cap_header.encode({ id: VFIO_REGION_INFO_CAP_TYPE, version: 1 }, body);
      return body;
    }
    const body = new Uint8Array(vfio_info_cap_header.size + c.body.byteLength);
    body.set(c.body, vfio_info_cap_header.size);
    vfio_info_cap_header.encode({ id: c.id, version: c.version }, body);
    return body;
  });
  // Each capability starts 8-byte aligned, as the kernel lays them out.
  const sizes = parts.map((p) => Math.ceil(p.byteLength / 8) * 8);
  const out = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
  let at = 0;
  parts.forEach((p, i) => {
    out.set(p, at);
    const next = i + 1 < parts.length ? at + (sizes[i] as number) : 0;
    new DataView(out.buffer, out.byteOffset).setUint32(at + vfio_info_cap_header.offsets.next, next, true);
    at += sizes[i] as number;
  });
  return out;
}

/**
 * Copy of a model chain (offsets relative to its start) with every `next`
 * moved by `base`, for placing it `base` bytes into the reply payload.
 * Throws RangeError on a malformed model chain (a model bug: the server answers EIO).
 */
export function rebaseCaps(caps: Uint8Array, base: number): Uint8Array {
  const out = caps.slice();
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let at = 0;
  for (let hops = 0; out.byteLength > 0; hops++) {
    if (
      at + vfio_info_cap_header.size > out.byteLength ||
      hops > out.byteLength / vfio_info_cap_header.size
    ) {
      throw new RangeError(`region capability chain is malformed at offset ${at}`);
    }
    const nextAt = at + vfio_info_cap_header.offsets.next;
    const next = dv.getUint32(nextAt, true);
    if (next === 0) break;
    if (next <= at) throw new RangeError(`region capability chain goes backwards at offset ${at}`);
    dv.setUint32(nextAt, next + base, true);
    at = next;
  }
  return out;
}

/**
 * Walk the chain in a full region-info reply payload (vfio_region_info then
 * caps). `reply` starts at vfio_region_info. Throws ProtocolError on a chain
 * that points outside the payload, backwards, or at itself.
 */
export function parseRegionCaps(reply: Uint8Array, capOffset: number): RegionCaps {
  const out: RegionCaps = { all: [] };
  let at = capOffset;
  let last = vfio_region_info.size - 1;
  while (at !== 0) {
    if (at <= last || at + vfio_info_cap_header.size > reply.byteLength) {
      throw new ProtocolError(
        `region capability at offset ${at} is outside the ${reply.byteLength}-byte reply`,
      );
    }
    const h = vfio_info_cap_header.decode(reply, at);
    const end = h.next !== 0 ? h.next : reply.byteLength;
    if (h.next !== 0 && h.next <= at)
      throw new ProtocolError(`region capability chain loops at offset ${at}`);
    const cap = reply.subarray(at, Math.min(end, reply.byteLength));
    out.all.push({ id: h.id, version: h.version, body: cap.slice(vfio_info_cap_header.size) });
    if (h.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
      const { nr_areas } = vfio_region_info_cap_sparse_mmap.decode(cap);
      const need = vfio_region_info_cap_sparse_mmap.size + nr_areas * vfio_region_sparse_mmap_area.size;
      if (need > cap.byteLength) throw new ProtocolError(`sparse mmap capability claims ${nr_areas} areas`);
      out.sparseMmap = Array.from({ length: nr_areas }, (_, i) =>
        vfio_region_sparse_mmap_area.decode(
          cap,
          vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size,
        ),
      );
    } else if (h.id === VFIO_REGION_INFO_CAP_TYPE) {
      const { type, subtype } = vfio_region_info_cap_type.decode(cap);
      out.type = { type, subtype };
    }
    last = at;
    at = h.next;
  }
  return out;
}
