// The server's VFIO_USER_DEVICE_GET_REGION_INFO reply (vfio-user.rst,
// "VFIO_USER_DEVICE_GET_REGION_INFO" and "Message sizes"), built from what
// the device model described. Two rules are enforced here, for every model:
//
// - The capability chain is sent only when it fits the request's argsz. When
//   it does not, the reply is the fixed part with argsz = the size needed,
//   no CAPS flag, cap_offset 0 and no fd, so the client retries with a larger
//   argsz — as libvfio-user's handle_device_get_region_info does. (A reply
//   with CAPS set but cap_offset 0 is rejected by QEMU before any retry.)
// - A SPARSE_MMAP capability describes which parts of a region the client may
//   mmap, so a region without VFIO_REGION_INFO_FLAG_MMAP carries none; one a
//   model attached anyway is dropped (and reported through `log`).

import type { Fd } from '../../sys/fd.js';
import { buildCapChain, parseCapBlob } from '../uapi/caps.js';
import {
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  vfio_region_info,
} from '../uapi/vfio.js';
import { rebaseCaps } from './caps.js';
import type { RegionDescription } from './device-model.js';

export interface RegionInfoReply {
  payload: Uint8Array;
  /** The region's fd, to send with the reply (and then close). */
  fds?: Fd[];
}

/**
 * The reply to a GET_REGION_INFO whose argsz was `argsz`. Takes ownership of `r.fd` (returned in `fds`
 * or closed). Throws RangeError on a malformed model chain (a model bug: the server answers EIO).
 */
export function regionInfoReply(
  argsz: number,
  index: number,
  r: RegionDescription,
  log: (message: string) => void,
): RegionInfoReply {
  let chain = r.caps ?? new Uint8Array(0);
  try {
    if (!(r.flags & VFIO_REGION_INFO_FLAG_MMAP)) chain = withoutSparseMmap(chain, index, log);
  } catch (err) {
    r.fd?.close();
    throw err;
  }
  const caps = chain.byteLength > 0 ? rebaseCaps(chain, vfio_region_info.size) : null;
  const full = vfio_region_info.size + (caps?.byteLength ?? 0);
  const flags = r.flags & ~VFIO_REGION_INFO_FLAG_CAPS;
  const head = { argsz: full, flags, index, size: r.size, offset: r.offset, cap_offset: 0 };
  if (!caps || argsz < full) {
    if (caps) {
      // Too small for the chain: only the fixed part, saying how much is needed. The fd comes with the full reply.
      r.fd?.close();
      return { payload: vfio_region_info.encode(head) };
    }
    return { payload: vfio_region_info.encode(head), ...(r.fd ? { fds: [r.fd] } : {}) };
  }
  const out = new Uint8Array(full);
  vfio_region_info.encode(
    { ...head, flags: flags | VFIO_REGION_INFO_FLAG_CAPS, cap_offset: vfio_region_info.size },
    out,
  );
  out.set(caps, vfio_region_info.size);
  return { payload: out, ...(r.fd ? { fds: [r.fd] } : {}) };
}

function withoutSparseMmap(chain: Uint8Array, index: number, log: (message: string) => void): Uint8Array {
  const caps = parseCapBlob(chain);
  if (!caps.some((c) => c.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP)) return chain;
  log(`region ${index} is not mmap-able but its model gave it a SPARSE_MMAP capability; dropped`);
  const kept = caps.filter((c) => c.id !== VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  return buildCapChain(kept.map((c) => ({ id: c.id, version: c.version, bytes: c.bytes.slice() })));
}
