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
  vfio_user_header,
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
  const payload = m.payload ?? new Uint8Array(0);
  const out = Buffer.alloc(HEADER_SIZE + payload.byteLength);
  vfio_user_header.encode(
    {
      msg_id: m.msgId,
      cmd: m.command,
      msg_size: out.byteLength,
      flags: m.flags,
      error_no: m.errorNo ?? 0,
    },
    out,
  );
  out.set(payload, HEADER_SIZE);
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
    text = new TextDecoder('utf-8', { fatal: true }).decode(m.payload.subarray(0, MAX_ERROR_REASON));
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
  const h = vfio_user_header.decode(data);
  if (h.msg_size !== data.byteLength) {
    throw new ProtocolError(
      `${commandName(h.cmd)} msg_size ${h.msg_size} does not match the ${data.byteLength} bytes received`,
    );
  }
  const type = h.flags & VFIO_USER_F_TYPE_MASK;
  if (type !== VFIO_USER_F_TYPE_COMMAND && type !== VFIO_USER_F_TYPE_REPLY) {
    throw new ProtocolError(`${commandName(h.cmd)} has unknown message type ${type}`);
  }
  if ((h.flags & ~(VFIO_USER_F_TYPE_MASK | VFIO_USER_F_NO_REPLY | VFIO_USER_F_ERROR)) !== 0) {
    throw new ProtocolError(
      `${commandName(h.cmd)} sets reserved header flag bits (0x${h.flags.toString(16)})`,
    );
  }
  return {
    msgId: h.msg_id,
    command: h.cmd,
    flags: h.flags,
    errorNo: h.error_no,
    payload: data.subarray(HEADER_SIZE),
  };
}
