// Region-info capability chains as vfio-user carries them (vfio-user.rst,
// "VFIO region capabilities"). The chain format and the capability layouts
// are the kernel's and live in ../uapi/caps.ts; this file only adapts them
// to the two places vfio-user needs them: a device model hands over a base-0
// chain (buildRegionCaps), the server places it behind vfio_region_info
// (rebaseCaps), and the client reads it from a reply (parseRegionCaps).
import { ProtocolError } from '../../errors.js';
import {
  buildCapChain,
  type CapSpec as ChainCap,
  decodeRegionTypeCap,
  decodeSparseMmapCap,
  parseCapChain,
  rebaseCapChain,
  regionTypeCap,
  sparseMmapCap,
} from '../uapi/caps.js';
import {
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  vfio_info_cap_header,
  vfio_region_info,
} from '../uapi/vfio.js';

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

/** A base-0 chain, as a device model hands it over in RegionDescription.caps. */
export function buildRegionCaps(caps: CapSpec[]): Uint8Array {
  const specs: ChainCap[] = caps.map((c) => {
    if ('sparseMmap' in c) return sparseMmapCap(c.sparseMmap);
    if ('subtype' in c) return regionTypeCap(c.type, c.subtype);
    const bytes = new Uint8Array(vfio_info_cap_header.size + c.body.byteLength);
    bytes.set(c.body, vfio_info_cap_header.size);
    return { id: c.id, version: c.version, bytes };
  });
  return buildCapChain(specs);
}

/**
 * A copy of a model's base-0 chain with every `next` moved by `base`, for placing it `base` bytes into the
 * reply. Throws RangeError on a malformed model chain (a model bug: the server answers EIO).
 */
export function rebaseCaps(caps: Uint8Array, base: number): Uint8Array {
  return rebaseCapChain(caps, base);
}

/**
 * The chain in a full region-info reply payload (vfio_region_info, then caps). Throws ProtocolError on a chain
 * that starts inside the fixed part, points outside the payload, or loops.
 */
export function parseRegionCaps(reply: Uint8Array, capOffset: number): RegionCaps {
  if (capOffset === 0) return { all: [] };
  if (capOffset < vfio_region_info.size) {
    throw new ProtocolError(`region capability at offset ${capOffset} is inside vfio_region_info`);
  }
  const out: RegionCaps = { all: [] };
  try {
    for (const cap of parseCapChain(reply, capOffset)) {
      out.all.push({ id: cap.id, version: cap.version, body: cap.bytes.slice(vfio_info_cap_header.size) });
      if (cap.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP) out.sparseMmap = decodeSparseMmapCap(cap.bytes);
      else if (cap.id === VFIO_REGION_INFO_CAP_TYPE) out.type = decodeRegionTypeCap(cap.bytes);
    }
  } catch (err) {
    if (err instanceof ProtocolError) throw err;
    throw new ProtocolError(`bad region capability chain: ${(err as Error).message}`);
  }
  return out;
}
