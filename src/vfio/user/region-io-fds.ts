// VFIO_USER_DEVICE_GET_REGION_IO_FDS (vfio-user.rst): the request, the reply
// head and the ioeventfd sub-region entry, with the server-side checks and
// the client-side decoding. Kept apart from messages.ts/validate.ts because
// it is one self-contained command.
//
// Layouts follow the spec's tables: request and reply head are { argsz, flags,
// index, count } (16 bytes); each sub-region entry is 40 bytes ("currently
// 40 bytes ... not to be relied on"). Reply argsz = 16 + 40·count is what the
// full reply needs; when the client's argsz is smaller, the reply is the head
// alone, with no fds, and the client asks again with the argsz it was told.
// A client reads entries at the stride the reply's argsz gives: libvfio-user's
// are 48 bytes (shadow_mem_fd_index in the padding, then shadow_offset, then
// datamatch at 40), its vfio_user_sub_region_ioeventfd_t.
import { VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { struct } from '../struct.js';
import { vfio_user_region_io_fds_request } from './messages.js';

/** The reply head (same fields as the request), followed by `count` sub-region entries. */
export const vfio_user_region_io_fds_reply = vfio_user_region_io_fds_request;

/** Sub-Region IO FD info (ioeventfd); the ioregionfd form has the same size, user_data in place of datamatch. */
export const vfio_user_sub_region_ioeventfd = struct(
  'vfio_user_sub_region_ioeventfd',
  [
    ['offset', 'u64'],
    ['size', 'u64'],
    ['fd_index', 'u32'],
    ['type', 'u32'],
    ['flags', 'u32'],
    ['padding', 'u32'],
    ['datamatch', 'u64'],
  ] as const,
  { packed: true },
);

export const VFIO_USER_IO_FD_TYPE_IOEVENTFD = 0;
export const VFIO_USER_IO_FD_TYPE_IOREGIONFD = 1;
/** libvfio-user's: an ioeventfd whose writes land in shadow memory (another fd); devlease does not use it. */
export const VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW = 2;
/** libvfio-user's entry: the spec's 40 bytes with shadow_offset (u64) before datamatch. */
const LIBVFIO_USER_ENTRY = 48;
/** KVM_IOEVENTFD_FLAG_DATAMATCH (linux/kvm.h): datamatch is meaningful. */
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;

export interface IoFdSubRegion {
  /** Offset of the sub-region in the region. */
  offset: bigint;
  size: bigint;
  /** Index into the reply's fds. */
  fdIndex: number;
  type: number;
  flags: number;
  datamatch: bigint;
}

/** What a device model answers: the sub-regions and the fds they index (sent, then closed by the server). */
export interface RegionIoFds {
  subRegions: IoFdSubRegion[];
  fds: Fd[];
  /**
   * Server side, optional: called once the connection has taken a reply carrying these fds to send; not
   * for a head-only reply, a refusal (ENOSPC), or a request that asked for no reply. A device that changes how
   * it waits once its fds are out (SA-1 sleeps until kicked) must not do so for fds nobody was given.
   */
  sent?: () => void;
}

const HEAD = vfio_user_region_io_fds_request.size;
const ENTRY = vfio_user_sub_region_ioeventfd.size;

/** Server side: check the request ("flags, count: must be zero"). */
export function parseRegionIoFdsRequest(payload: Uint8Array): { argsz: number; index: number } {
  const name = 'VFIO_USER_DEVICE_GET_REGION_IO_FDS';
  if (payload.byteLength !== HEAD) {
    throw new VfioError('EINVAL', `${name} payload is ${payload.byteLength} bytes, expected ${HEAD}`);
  }
  const r = vfio_user_region_io_fds_request.decode(payload);
  if (r.argsz < HEAD) throw new VfioError('EINVAL', `${name} argsz ${r.argsz} is smaller than ${HEAD}`);
  if (r.flags !== 0) throw new VfioError('EINVAL', `${name} flags must be 0, got ${r.flags}`);
  if (r.count !== 0) throw new VfioError('EINVAL', `${name} count must be 0, got ${r.count}`);
  return { argsz: r.argsz, index: r.index };
}

/**
 * Server side: the reply payload and the fds to send. When argsz is too small
 * for every entry, only the head (with the argsz needed) goes, and no fds.
 * `maxFds` is what the client accepts per message (its max_msg_fds).
 */
export function encodeRegionIoFdsReply(
  index: number,
  argsz: number,
  answer: RegionIoFds,
  maxFds: number,
): { payload: Uint8Array; fds: Fd[] } {
  const { subRegions, fds } = answer;
  const need = HEAD + ENTRY * subRegions.length;
  for (const s of subRegions) {
    if (!Number.isInteger(s.fdIndex) || s.fdIndex < 0 || s.fdIndex >= fds.length) {
      throw new Error(`device model gave sub-region fd_index ${s.fdIndex} with ${fds.length} fds`);
    }
  }
  const head = { argsz: need, flags: 0, index, count: subRegions.length };
  if (argsz < need) return { payload: vfio_user_region_io_fds_reply.encode(head), fds: [] };
  if (fds.length > maxFds) {
    throw new VfioError(
      'ENOSPC',
      `region ${index} has ${fds.length} io fds; the client accepts at most ${maxFds} per message (max_msg_fds)`,
    );
  }
  const out = new Uint8Array(need);
  vfio_user_region_io_fds_reply.encode(head, out);
  subRegions.forEach((s, i) => {
    vfio_user_sub_region_ioeventfd.encode(
      {
        offset: s.offset,
        size: s.size,
        fd_index: s.fdIndex,
        type: s.type,
        flags: s.flags,
        padding: 0,
        datamatch: s.datamatch,
      },
      out.subarray(HEAD + i * ENTRY),
    );
  });
  return { payload: out, fds };
}

/**
 * Client side: decode a reply. A head alone (its argsz says how large a full reply is) gives no entries
 * (null). Entries are read at the stride the payload gives — the spec's 40 bytes, or libvfio-user's 48
 * (datamatch at 40); any other stride is an error.
 */
export function decodeRegionIoFdsReply(payload: Uint8Array): {
  argsz: number;
  index: number;
  count: number;
  subRegions: IoFdSubRegion[] | null;
} {
  if (payload.byteLength < HEAD) throw new Error(`reply of ${payload.byteLength} bytes, head is ${HEAD}`);
  const h = vfio_user_region_io_fds_reply.decode(payload);
  // Object.assign, not a spread, here and below: on Node 20 (V8 11.3) a spread followed by a new property makes a new
  // hidden class nearly every call (docs/performance-history.md, issue 16, twenty-fourth pass §4).
  if (h.count === 0) return Object.assign({}, h, { subRegions: [] });
  if (payload.byteLength === HEAD) return Object.assign({}, h, { subRegions: null });
  const stride = (payload.byteLength - HEAD) / h.count;
  if (stride !== ENTRY && stride !== LIBVFIO_USER_ENTRY) {
    throw new Error(
      `reply of ${payload.byteLength} bytes for ${h.count} sub-regions: entries of ${stride} bytes, not ${ENTRY} (the spec) or ${LIBVFIO_USER_ENTRY} (libvfio-user)`,
    );
  }
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const subRegions: IoFdSubRegion[] = [];
  for (let i = 0; i < h.count; i++) {
    const at = HEAD + i * stride;
    const e = vfio_user_sub_region_ioeventfd.decode(payload.subarray(at, at + ENTRY));
    subRegions.push({
      offset: e.offset,
      size: e.size,
      fdIndex: e.fd_index,
      type: e.type,
      flags: e.flags,
      datamatch: stride === ENTRY ? e.datamatch : dv.getBigUint64(at + 40, true),
    });
  }
  return Object.assign({}, h, { subRegions });
}
