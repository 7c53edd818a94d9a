// Structure-aware hostile vfio-user frames for the fuzz suite: a valid
// 16-byte header around a payload built field by field for the command,
// with field values drawn from the edges (0, 1, page bounds, 2^31, 2^32-1,
// 2^63, 2^64-1, region ends) — plus lying sizes, the wrong command flags
// (replies, errors, no_reply), unknown commands and VERSION out of place.
// Which fds ride along is the session's business (sessions.ts).
import * as P from '../../src/vfio/user/protocol.js';
import type { Rng } from '../helpers/rng.js';

export interface Frame {
  bytes: Buffer;
  /** Whether the frame lies about its size (the server must cut the connection, nothing worse). */
  lies: boolean;
  /** A command that wants a reply (no reply or error flags): the server answers it or cuts the connection. */
  wantsReply: boolean;
  command: number;
}

const U32_EDGES = [
  0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 4095, 4096, 4097, 65536, 0x7fffffff, 0x80000000, 0xffffffff,
];
const U64_EDGES = [
  0n,
  1n,
  4095n,
  4096n,
  0x10000n,
  0x100000n,
  0x1000000n,
  0x7fffffffn,
  0xffffffffn,
  0x100000000n,
  1n << 47n,
  1n << 63n,
  (1n << 64n) - 1n,
  (1n << 64n) - 4096n,
];

const u32 = (r: Rng): number => (r.chance(0.6) ? r.pick(U32_EDGES) : r.int(0, 0xffffffff));
const u64 = (r: Rng): bigint =>
  r.chance(0.6) ? r.pick(U64_EDGES) : (BigInt(r.int(0, 0xffffffff)) << 32n) | BigInt(r.int(0, 0xffffffff));
/** A region index: mostly real ones (0..9, the devlease info region 10), some past the end. */
const region = (r: Rng): number => (r.chance(0.85) ? r.int(0, 11) : u32(r));
const small = (r: Rng): number =>
  r.chance(0.7) ? r.pick([0, 1, 2, 4, 8, 16, 64, 256, 4096]) : r.int(0, 70_000);

function fields(parts: (['u16', number] | ['u32', number] | ['u64', bigint])[]): Buffer {
  const size = parts.reduce((n, [t]) => n + (t === 'u16' ? 2 : t === 'u32' ? 4 : 8), 0);
  const b = Buffer.alloc(size);
  let o = 0;
  for (const [t, v] of parts) {
    if (t === 'u16') o = b.writeUInt16LE((v as number) & 0xffff, o);
    else if (t === 'u32') o = b.writeUInt32LE((v as number) >>> 0, o);
    else o = b.writeBigUInt64LE(BigInt.asUintN(64, v as bigint), o);
  }
  return b;
}

/** A payload for `command`, built from its fields, then maybe cut short or padded. */
function payload(r: Rng, command: number): Buffer {
  let p: Buffer;
  switch (command) {
    case P.VFIO_USER_VERSION: {
      const json = r.pick([
        '{}',
        '{"capabilities":{}}',
        `{"capabilities":{"max_msg_fds":${u32(r)},"max_data_xfer_size":${u32(r)},"pgsizes":${u32(r)}}}`,
        '{"capabilities":{"devlease":{"request":{"kind":{}}}}}',
        `{"capabilities":{"devlease":{"request":{"kind":"queue","count":${u32(r)}}}}}`,
        '{"capabilities":{"migration":{"pgsize":4096}},"x":[[[[[[[[[[]]]]]]]]]]}',
        '{"capabilities":',
        '\u0000'.repeat(r.int(0, 64)),
        r.bytes(r.int(0, 128)).toString('latin1'),
      ]);
      p = Buffer.concat([
        fields([
          ['u16', r.chance(0.8) ? 0 : u32(r)],
          ['u16', r.int(0, 3)],
        ]),
        Buffer.from(json),
        Buffer.from(r.chance(0.8) ? [0] : []),
      ]);
      break;
    }
    case P.VFIO_USER_DMA_MAP:
    case P.VFIO_USER_DMA_UNMAP:
      p = fields([
        ['u32', r.chance(0.5) ? 32 : u32(r)],
        ['u32', r.chance(0.5) ? r.int(0, 3) : u32(r)],
        ['u64', u64(r)],
        ['u64', u64(r)],
        ['u64', u64(r)],
      ]);
      break;
    case P.VFIO_USER_DEVICE_GET_INFO:
      p = fields([
        ['u32', r.chance(0.5) ? 16 : u32(r)],
        ['u32', u32(r)],
        ['u32', u32(r)],
        ['u32', u32(r)],
      ]);
      break;
    case P.VFIO_USER_DEVICE_GET_REGION_INFO:
    case P.VFIO_USER_DEVICE_GET_REGION_IO_FDS:
      p = fields([
        ['u32', r.chance(0.5) ? r.pick([32, 48, 64, 128, 4096]) : u32(r)],
        ['u32', u32(r)],
        ['u32', region(r)],
        ['u32', u32(r)],
        ['u64', u64(r)],
        ['u64', u64(r)],
      ]);
      break;
    case P.VFIO_USER_DEVICE_GET_IRQ_INFO:
      p = fields([
        ['u32', r.chance(0.5) ? 16 : u32(r)],
        ['u32', u32(r)],
        ['u32', r.int(0, 6)],
        ['u32', u32(r)],
      ]);
      break;
    case P.VFIO_USER_DEVICE_SET_IRQS: {
      const count = r.chance(0.7) ? r.int(0, 4) : u32(r);
      const extra = r.bytes(r.chance(0.5) ? Math.min(count, 64) : r.int(0, 64));
      p = Buffer.concat([
        fields([
          ['u32', r.chance(0.5) ? 20 + extra.length : u32(r)],
          ['u32', r.chance(0.6) ? r.pick([0x21, 0x22, 0x24, 0x41, 0x44, 0x81, 0x84, 0x100]) : u32(r)],
          ['u32', r.int(0, 6)],
          ['u32', r.chance(0.7) ? r.int(0, 9) : u32(r)],
          ['u32', count],
        ]),
        extra,
      ]);
      break;
    }
    case P.VFIO_USER_REGION_READ:
    case P.VFIO_USER_REGION_WRITE: {
      const count = r.chance(0.7) ? r.pick([1, 2, 4, 8, 16, 4096]) : small(r);
      const data =
        command === P.VFIO_USER_REGION_WRITE
          ? r.bytes(r.chance(0.8) ? Math.min(count, 70_000) : r.int(0, 64))
          : Buffer.alloc(0);
      const offset = r.chance(0.7) ? BigInt(r.int(0, 0x2000) & ~3) : u64(r);
      p = Buffer.concat([
        fields([
          ['u64', offset],
          ['u32', region(r)],
          ['u32', count],
        ]),
        data,
      ]);
      break;
    }
    case P.VFIO_USER_DEVICE_FEATURE:
      p = Buffer.concat([
        fields([
          ['u32', r.chance(0.5) ? r.pick([8, 16, 24, 64]) : u32(r)],
          ['u32', r.chance(0.7) ? r.pick([0x10000, 0x20000, 0x40000]) | r.int(0, 0xffff) : u32(r)],
        ]),
        r.bytes(r.pick([0, 8, 16, 24, r.int(0, 200)])),
      ]);
      break;
    default:
      p = r.bytes(small(r) % 512);
  }
  // Cut short, or trailing junk: the parsers must name the size, not read past it.
  if (r.chance(0.15)) p = p.subarray(0, r.int(0, p.length));
  else if (r.chance(0.1)) p = Buffer.concat([p, r.bytes(r.int(1, 64))]);
  return p;
}

/** Commands weighted towards the ones a device model parses. */
const COMMANDS = [
  1, 2, 2, 3, 3, 4, 5, 5, 6, 7, 8, 8, 9, 9, 9, 10, 10, 10, 11, 12, 13, 14, 15, 16, 16, 17, 18, 0, 19, 0xffff,
];

export function frame(r: Rng, opts: { msgId: number; allowReset: boolean }): Frame {
  let command = r.pick(COMMANDS);
  if (command === P.VFIO_USER_DEVICE_RESET && !opts.allowReset) command = P.VFIO_USER_DEVICE_GET_INFO;
  const body = payload(r, command);
  let flags = 0;
  if (r.chance(0.01)) flags = r.pick([P.VFIO_USER_F_TYPE_REPLY, P.VFIO_USER_F_ERROR, 0xf, u32(r)]);
  else if (r.chance(0.1)) flags = P.VFIO_USER_F_NO_REPLY;
  const total = 16 + body.length;
  let size = total;
  let lies = false;
  if (r.chance(0.01)) {
    // msg_size shorter than the header, or longer than what follows (the rest of the stream is read as this message).
    size = r.pick([0, 1, 15, total + r.int(1, 64), 0xffffffff, 64 * 1024 * 1024]);
    lies = true;
  }
  const head = fields([
    ['u16', opts.msgId],
    ['u16', command],
    ['u32', size],
    ['u32', flags],
    ['u32', r.chance(0.9) ? 0 : u32(r)],
  ]);
  return { bytes: Buffer.concat([head, body]), lies, wantsReply: flags === 0 && !lies, command };
}
