// Messages: a 16-byte header then the payload (vfio-user.rst, "Header"); the
// stream transport (transport.ts) cuts them out of the byte stream by msg_size. Decoding checks what every
// message must satisfy whatever its command; per-command checks are in
// validate.ts (server side) and client.ts (replies).
import { ProtocolError } from '../../errors.js';
import {
  commandName,
  HEADER_SIZE,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_NO_REPLY,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_F_TYPE_MASK,
  VFIO_USER_F_TYPE_REPLY,
} from './protocol.js';

export interface VfioUserMessage {
  msgId: number;
  command: number;
  /** Raw header flags (type | NO_REPLY | ERROR). */
  flags: number;
  errorNo: number;
  payload: Uint8Array;
}

export const isReply = (m: { flags: number }): boolean =>
  (m.flags & VFIO_USER_F_TYPE_MASK) === VFIO_USER_F_TYPE_REPLY;
export const isError = (m: { flags: number }): boolean => (m.flags & VFIO_USER_F_ERROR) !== 0;
export const wantsReply = (m: { flags: number }): boolean => (m.flags & VFIO_USER_F_NO_REPLY) === 0;

/** One message as bytes: header (msg_size computed) followed by the payload. */
export function encodeMessage(m: {
  msgId: number;
  command: number;
  flags: number;
  errorNo?: number;
  payload?: Uint8Array;
}): Buffer {
  const payload = m.payload;
  const out = Buffer.allocUnsafe(HEADER_SIZE + (payload?.byteLength ?? 0));
  if (payload) out.set(payload, HEADER_SIZE);
  return writeHeader(out, m.msgId, m.command, m.flags, m.errorNo ?? 0);
}

/**
 * Fill in the header of a message built in place: `out` is the whole message, its payload already at
 * HEADER_SIZE (a reply made without a copy of its payload). The fields are written field by field — this runs
 * once per message each way — and range-checked as vfio_user_header's encoder would (RangeError).
 */
export function writeHeader(out: Buffer, msgId: number, command: number, flags: number, errorNo = 0): Buffer {
  out.writeUInt16LE(msgId, 0);
  out.writeUInt16LE(command, 2);
  out.writeUInt32LE(out.byteLength, 4);
  out.writeUInt32LE(flags, 8);
  out.writeUInt32LE(errorNo, 12);
  return out;
}

export function encodeCommand(msgId: number, command: number, payload?: Uint8Array, noReply = false): Buffer {
  const flags = VFIO_USER_F_TYPE_COMMAND | (noReply ? VFIO_USER_F_NO_REPLY : 0);
  return encodeMessage({ msgId, command, flags, ...(payload ? { payload } : {}) });
}

export function encodeReply(msgId: number, command: number, payload?: Uint8Array): Buffer {
  return encodeMessage({ msgId, command, flags: VFIO_USER_F_TYPE_REPLY, ...(payload ? { payload } : {}) });
}

/** Longest reason text carried in an error reply (devlease extension "error_reason"). */
export const MAX_ERROR_REASON = 1024;

/**
 * One strict UTF-8 decoder for the protocol's text (error reasons, VERSION's JSON): making one per message
 * cost ~3 µs, per lease and per error reply. decode() without `stream` starts afresh each call, a failed
 * one too, so sharing it is safe.
 */
export const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * An error reply carries only the header (vfio-user.rst: "the reply message must
 * only include the reply header") — unless the client negotiated devlease's
 * "error_reason" extension, in which case the UTF-8 reason follows the header.
 */
export function encodeErrorReply(msgId: number, command: number, errno: number, reason?: string): Buffer {
  let payload: Uint8Array | undefined;
  if (reason) {
    payload = new TextEncoder().encode(reason);
    if (payload.byteLength > MAX_ERROR_REASON) {
      payload = new TextEncoder().encode(`${reason.slice(0, MAX_ERROR_REASON / 4 - 1)}…`);
    }
  }
  const flags = VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR;
  return encodeMessage({ msgId, command, flags, errorNo: errno, ...(payload ? { payload } : {}) });
}

/**
 * The reason text of an error reply, if it carries one: UTF-8 text without control characters (other than
 * tab and newline). Anything else is not a reason and is ignored. Callers use it only where the devlease
 * "error_reason" extension applies (see channel.ts).
 */
export function errorReason(m: VfioUserMessage): string | undefined {
  if (m.payload.byteLength === 0) return undefined;
  let text: string;
  try {
    text = utf8Strict.decode(m.payload.subarray(0, MAX_ERROR_REASON));
  } catch {
    return undefined;
  }
  return /[\u0000-\u0008\u000b-\u001f\u007f]/.test(text) ? undefined : text;
}

/**
 * Parse one received record. Throws ProtocolError when the record cannot be a
 * vfio-user message: shorter than a header, msg_size not equal to the bytes
 * received, an unknown type, reserved flag bits set.
 */
export function decodeMessage(data: Uint8Array): VfioUserMessage {
  if (data.byteLength < HEADER_SIZE) {
    throw new ProtocolError(
      `message of ${data.byteLength} bytes is shorter than the ${HEADER_SIZE}-byte header`,
    );
  }
  // The header's fields read in place (once per message each way; vfio_user_header is the layout).
  const msgId = u16(data, 0);
  const cmd = u16(data, 2);
  const size = u32(data, 4);
  const flags = u32(data, 8);
  if (size !== data.byteLength) {
    throw new ProtocolError(
      `${commandName(cmd)} msg_size ${size} does not match the ${data.byteLength} bytes received`,
    );
  }
  const type = flags & VFIO_USER_F_TYPE_MASK;
  if (type !== VFIO_USER_F_TYPE_COMMAND && type !== VFIO_USER_F_TYPE_REPLY) {
    throw new ProtocolError(`${commandName(cmd)} has unknown message type ${type}`);
  }
  if ((flags & ~(VFIO_USER_F_TYPE_MASK | VFIO_USER_F_NO_REPLY | VFIO_USER_F_ERROR)) !== 0) {
    throw new ProtocolError(`${commandName(cmd)} sets reserved header flag bits (0x${flags.toString(16)})`);
  }
  return { msgId, command: cmd, flags, errorNo: u32(data, 12), payload: data.subarray(HEADER_SIZE) };
}

/** Little-endian u16 / u32 at `at` (the caller has checked the length). */
export function u16(b: Uint8Array, at: number): number {
  return (b[at] as number) | ((b[at + 1] as number) << 8);
}

export function u32(b: Uint8Array, at: number): number {
  return (
    ((b[at] as number) | ((b[at + 1] as number) << 8) | ((b[at + 2] as number) << 16)) +
    (b[at + 3] as number) * 0x1000000
  );
}

/** Little-endian u64 at `at`, as vfio_user structs carry offsets. */
export function u64(b: Uint8Array, at: number): bigint {
  const lo = u32(b, at);
  const hi = u32(b, at + 4);
  return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
}
