// Payload layouts that exist only in vfio-user (the ones shared with the VFIO
// ioctls — vfio_region_info, vfio_irq_info, vfio_irq_set, vfio_device_feature —
// come from ../uapi/vfio.ts). Field names follow the spec's tables and
// libvfio-user's include/vfio-user.h; all are packed little-endian.

import { misuse } from '../../errors.js';
import { struct } from '../struct.js';
import {
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  vfio_device_feature,
  vfio_irq_set,
} from '../uapi/vfio.js';
import { utf8Strict } from './codec.js';

/** VFIO_USER_VERSION request and reply, followed by optional NUL-terminated JSON (vfio-user.rst, "Version"). */
export const vfio_user_version = struct(
  'vfio_user_version',
  [
    ['major', 'u16'],
    ['minor', 'u16'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_DMA_MAP request (vfio-user.rst, "VFIO_USER_DMA_MAP"): 32 bytes. */
export const vfio_user_dma_map = struct(
  'vfio_user_dma_map',
  [
    ['argsz', 'u32'],
    ['flags', 'u32'],
    ['offset', 'u64'],
    ['addr', 'u64'],
    ['size', 'u64'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_DMA_UNMAP request and reply (vfio-user.rst, "VFIO_USER_DMA_UNMAP"): 24 bytes. */
export const vfio_user_dma_unmap = struct(
  'vfio_user_dma_unmap',
  [
    ['argsz', 'u32'],
    ['flags', 'u32'],
    ['addr', 'u64'],
    ['size', 'u64'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_DEVICE_GET_INFO request and reply: vfio_device_info without cap_offset/pad (16 bytes). */
export const vfio_user_device_info = struct(
  'vfio_user_device_info',
  [
    ['argsz', 'u32'],
    ['flags', 'u32'],
    ['num_regions', 'u32'],
    ['num_irqs', 'u32'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_DEVICE_GET_REGION_IO_FDS request (the reply and its sub-regions: region-io-fds.ts). */
export const vfio_user_region_io_fds_request = struct(
  'vfio_user_region_io_fds_request',
  [
    ['argsz', 'u32'],
    ['flags', 'u32'],
    ['index', 'u32'],
    ['count', 'u32'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_REGION_READ/WRITE request and reply head, followed by `count` data bytes where carried. */
export const vfio_user_region_access = struct(
  'vfio_user_region_access',
  [
    ['offset', 'u64'],
    ['region', 'u32'],
    ['count', 'u32'],
  ] as const,
  { packed: true },
);

/** VFIO_USER_DMA_READ/WRITE (server -> client) head, followed by data where carried. */
export const vfio_user_dma_region_access = struct(
  'vfio_user_dma_region_access',
  [
    ['addr', 'u64'],
    ['count', 'u64'],
  ] as const,
  { packed: true },
);

function concat(head: Uint8Array, tail: Uint8Array): Uint8Array {
  const out = new Uint8Array(head.byteLength + tail.byteLength);
  out.set(head, 0);
  out.set(tail, head.byteLength);
  return out;
}

/** VERSION payload: major, minor, then the JSON text and its terminating NUL. */
export function encodeVersion(major: number, minor: number, json: unknown): Uint8Array {
  const text = new TextEncoder().encode(`${JSON.stringify(json)}\0`);
  return concat(vfio_user_version.encode({ major, minor }), text);
}

export interface DecodedVersion {
  major: number;
  minor: number;
  /** The parsed JSON object, or {} when the optional version data is absent. */
  json: Record<string, unknown>;
}

/** Throws a RangeError/SyntaxError describing what is wrong; callers turn that into EINVAL. */
export function decodeVersion(payload: Uint8Array): DecodedVersion {
  const { major, minor } = vfio_user_version.decode(payload);
  let end = payload.byteLength;
  while (end > vfio_user_version.size && payload[end - 1] === 0) end--;
  if (end === vfio_user_version.size) return { major, minor, json: {} };
  const text = utf8Strict.decode(payload.subarray(vfio_user_version.size, end));
  const json: unknown = JSON.parse(text);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new SyntaxError('version data is not a JSON object');
  }
  return { major, minor, json: json as Record<string, unknown> };
}

/** REGION_WRITE request / REGION_READ reply: the access head followed by the bytes. */
export function encodeRegionAccess(offset: bigint, region: number, data: Uint8Array): Uint8Array {
  return concat(vfio_user_region_access.encode({ offset, region, count: data.byteLength }), data);
}

/** SET_IRQS request: vfio_irq_set, then `count` bool bytes for DATA_BOOL (nothing otherwise; eventfds travel as fds). */
export function encodeIrqSet(
  v: { flags: number; index: number; start: number; count: number },
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  // Object.assign, not a spread: on Node 20 (V8 11.3) a spread followed by a new property makes a new hidden class
  // nearly every call (docs/performance-history.md, issue 16, twenty-fourth pass §4).
  const head = vfio_irq_set.encode(Object.assign({}, v, { argsz: vfio_irq_set.size + data.byteLength }));
  return concat(head, data);
}

/**
 * What a client's SET_IRQS sends besides vfio_irq_set: with DATA_EVENTFD, `count` fds (assign) or none
 * (de-assign all) — fds travel only as SCM_RIGHTS, so a mix cannot be sent; with DATA_BOOL, `count` bools.
 * Throws ERR_DEVLEASE_INVALID_ARG otherwise.
 */
export function irqSetArgs<F>(s: { flags: number; count: number; fds?: (F | null)[]; bools?: Uint8Array }): {
  fds: F[];
  data?: Uint8Array;
} {
  const dataType = s.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
    const given = s.fds ?? [];
    const present = given.filter((f): f is F => f != null);
    if (present.length !== 0 && (present.length !== given.length || given.length !== s.count)) {
      throw invalidArg('DATA_EVENTFD needs count fds, or none to de-assign');
    }
    return { fds: present };
  }
  if (dataType === VFIO_IRQ_SET_DATA_BOOL) {
    if (!s.bools || s.bools.byteLength !== s.count) throw invalidArg('DATA_BOOL needs count bools');
    return { fds: [], data: s.bools };
  }
  return { fds: [] };
}

function invalidArg(message: string): Error {
  return misuse('ERR_DEVLEASE_INVALID_ARG', message);
}

/** DEVICE_FEATURE request and reply: vfio_device_feature then feature data. */
export function encodeFeature(argsz: number, flags: number, data: Uint8Array): Uint8Array {
  return concat(vfio_device_feature.encode({ argsz, flags }), data);
}
