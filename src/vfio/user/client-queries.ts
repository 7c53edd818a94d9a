// The vfio-user client's device queries (DEVICE_GET_INFO, GET_REGION_INFO, GET_IRQ_INFO,
// GET_REGION_IO_FDS, DEVICE_FEATURE): each one request and its reply's shape check, the
// ask-again-with-the-argsz-the-server-wants included. Kept apart from client.ts, which owns the
// connection (negotiation, handover, DMA maps, region access); a malformed reply still fails the
// connection through the `fail` the client passes in.
import { ProtocolError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import type { Field, StructLayout, StructValue } from '../struct.js';
import {
  VFIO_REGION_INFO_FLAG_CAPS,
  vfio_device_feature,
  vfio_irq_info,
  vfio_region_info,
} from '../uapi/vfio.js';
import { parseRegionCaps, type RegionCaps } from './caps.js';
import type { CallOptions, FdLike, ReplyMessage } from './channel.js';
import { encodeFeature, vfio_user_device_info, vfio_user_region_io_fds_request } from './messages.js';
import * as P from './protocol.js';
import {
  decodeRegionIoFdsReply,
  type IoFdSubRegion,
  VFIO_USER_IO_FD_TYPE_IOEVENTFD,
} from './region-io-fds.js';

export interface RegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
  caps: RegionCaps;
  /** The region's mappable fd, if the server sent one (the caller owns it). */
  fd: Fd | null;
}

/** What a query needs of the client: a request, and failing the connection on a malformed reply. */
export interface Requester {
  request(command: number, payload?: Uint8Array, fds?: FdLike[], opts?: CallOptions): Promise<ReplyMessage>;
  /** Fail the connection with `err` (EPROTO) and give it back to throw. */
  fail(err: Error): Error;
}

export async function deviceInfo(
  c: Requester,
  opts?: CallOptions,
): Promise<{ flags: number; num_regions: number; num_irqs: number }> {
  const d = await fixedQuery(c, P.VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info, {}, opts);
  return { flags: d.flags, num_regions: d.num_regions, num_irqs: d.num_irqs };
}

/**
 * A query whose request and reply are one fixed-size structure with argsz first (GET_INFO, GET_IRQ_INFO):
 * fds the server sends with the reply are not the caller's and are closed.
 */
async function fixedQuery<F extends readonly Field[]>(
  c: Requester,
  command: number,
  layout: StructLayout<F>,
  request: Partial<StructValue<F>>,
  opts: CallOptions | undefined,
): Promise<StructValue<F>> {
  const r = await c.request(command, layout.encode({ argsz: layout.size, ...request }), [], opts);
  closeAll(r.fds);
  return decodeReply(c, layout, r.payload, P.commandName(command));
}

/** Region info with its capability chain; retries once with the argsz the server asks for. */
export async function regionInfo(
  c: Requester,
  index: number,
  opts: CallOptions & { argsz?: number } = {},
): Promise<RegionInfo> {
  let argsz = opts.argsz ?? 128;
  for (let attempt = 0; ; attempt++) {
    const r = await c.request(
      P.VFIO_USER_DEVICE_GET_REGION_INFO,
      vfio_region_info.encode({ argsz, index }),
      [],
      opts,
    );
    let info: ReturnType<typeof vfio_region_info.decode>;
    try {
      info = decodeReply(c, vfio_region_info, r.payload, 'VFIO_USER_DEVICE_GET_REGION_INFO');
    } catch (err) {
      closeAll(r.fds); // a reply too short for its fixed part still brought them: ours to close
      throw err;
    }
    if (info.argsz > argsz && attempt === 0) {
      closeAll(r.fds);
      argsz = info.argsz;
      continue;
    }
    const [fd = null, ...extra] = r.fds;
    closeAll(extra);
    try {
      if (info.argsz > r.payload.byteLength) {
        throw new ProtocolError(
          `region ${index} info: argsz ${info.argsz} but ${r.payload.byteLength} bytes sent`,
        );
      }
      const withCaps = (info.flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 && info.cap_offset !== 0;
      const caps = withCaps ? parseRegionCaps(r.payload, info.cap_offset) : { all: [] };
      return { index: info.index, flags: info.flags, size: info.size, offset: info.offset, caps, fd };
    } catch (err) {
      fd?.close();
      throw c.fail(err as Error);
    }
  }
}

export async function irqInfo(
  c: Requester,
  index: number,
  opts?: CallOptions,
): Promise<{ index: number; flags: number; count: number }> {
  const i = await fixedQuery(c, P.VFIO_USER_DEVICE_GET_IRQ_INFO, vfio_irq_info, { index }, opts);
  return { index: i.index, flags: i.flags, count: i.count };
}

/**
 * DEVICE_FEATURE. `flags` holds GET/SET/PROBE; `feature` the index. The reply's data and fds
 * (owned by the caller) come back. `replyCapacity` bounds the reply data (argsz); default 4096.
 */
export async function feature(
  c: Requester,
  f: { flags: number; feature: number; data?: Uint8Array; fds?: FdLike[]; replyCapacity?: number },
  opts?: CallOptions,
): Promise<{ flags: number; data: Uint8Array; fds: Fd[] }> {
  const data = f.data ?? new Uint8Array(0);
  const argsz = vfio_device_feature.size + Math.max(data.byteLength, f.replyCapacity ?? 4096);
  const flags = (f.flags & ~0xffff) | (f.feature & 0xffff);
  const r = await c.request(P.VFIO_USER_DEVICE_FEATURE, encodeFeature(argsz, flags, data), f.fds ?? [], opts);
  try {
    const h = decodeReply(c, vfio_device_feature, r.payload, 'VFIO_USER_DEVICE_FEATURE');
    return { flags: h.flags, data: r.payload.slice(vfio_device_feature.size), fds: r.fds };
  } catch (err) {
    closeAll(r.fds);
    throw err;
  }
}

/**
 * VFIO_USER_DEVICE_GET_REGION_IO_FDS: the region's ioeventfd sub-regions and the fds the reply carried (the
 * caller owns them). Asks again once with the argsz the server says a full reply needs. Entries of other types
 * (ioregionfd; libvfio-user's shadow ioeventfds, whose writes land in memory of another fd) are left out: a
 * client that rings through one of those without its protocol would be lost.
 */
export async function regionIoFds(
  c: Requester,
  index: number,
  opts: CallOptions & { argsz?: number } = {},
): Promise<{ subRegions: IoFdSubRegion[]; fds: Fd[] }> {
  let argsz = opts.argsz ?? 16 + 40 * 64;
  for (let attempt = 0; ; attempt++) {
    const r = await c.request(
      P.VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      vfio_user_region_io_fds_request.encode({ argsz, index }),
      [],
      opts,
    );
    let reply: ReturnType<typeof decodeRegionIoFdsReply>;
    try {
      reply = decodeRegionIoFdsReply(r.payload);
      if (reply.subRegions === null && (attempt > 0 || reply.argsz <= argsz)) {
        throw new ProtocolError(`region ${index} io fds: ${reply.count} sub-regions, payload too short`);
      }
      if (reply.subRegions?.some((s) => s.fdIndex >= r.fds.length)) {
        throw new ProtocolError(`region ${index} io fds: fd_index beyond the ${r.fds.length} fds sent`);
      }
    } catch (err) {
      closeAll(r.fds);
      throw c.fail(err instanceof ProtocolError ? err : new ProtocolError((err as Error).message));
    }
    if (reply.subRegions === null) {
      closeAll(r.fds);
      argsz = reply.argsz;
      continue;
    }
    return {
      subRegions: reply.subRegions.filter((s) => s.type === VFIO_USER_IO_FD_TYPE_IOEVENTFD),
      fds: r.fds,
    };
  }
}

/** A reply's fixed layout, or the connection failed (EPROTO) when the payload is too short for it. */
export function decodeReply<T>(
  c: Requester,
  layout: { size: number; decode(b: Uint8Array): T },
  payload: Uint8Array,
  name: string,
): T {
  if (payload.byteLength < layout.size) {
    throw c.fail(new ProtocolError(`${name} reply is ${payload.byteLength} bytes, needs ${layout.size}`));
  }
  return layout.decode(payload);
}

/**
 * vfio_user_region_access (offset u64, region u32, count u32) written field by field: a register read's
 * request, once per call. Out-of-range values throw RangeError as the struct encoder's do.
 */
export function regionAccessHead(offset: bigint, region: number, count: number): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeBigUInt64LE(offset, 0);
  b.writeUInt32LE(region, 8);
  b.writeUInt32LE(count, 12);
  return b;
}

/**
 * The data of a REGION_READ reply (a view of it), once its access head (read in place) and size match the
 * request; otherwise the server broke the protocol (c.fail: EPROTO, the connection closes).
 */
export function regionReadData(
  c: Requester,
  payload: Uint8Array,
  offset: bigint,
  region: number,
  count: number,
): Buffer {
  const reply = Buffer.isBuffer(payload)
    ? payload
    : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  if (reply.byteLength < 16) {
    throw c.fail(new ProtocolError(`VFIO_USER_REGION_READ reply is ${reply.byteLength} bytes, needs 16`));
  }
  if (
    reply.readUInt32LE(12) !== count ||
    reply.readBigUInt64LE(0) !== offset ||
    reply.readUInt32LE(8) !== region ||
    reply.byteLength !== 16 + count
  ) {
    throw c.fail(new ProtocolError('REGION_READ reply does not match its request'));
  }
  return reply.subarray(16);
}

export function closeAll(fds: readonly Fd[]): void {
  for (const fd of fds) fd.close();
}
