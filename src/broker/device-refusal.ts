// A lease request the device refused reaches the lease client as the
// device's own refusal: its errno and its words (a REGION_WRITE the device
// answered EINVAL is EINVAL for the client too, not a generic EIO).
// Refusals the broker makes itself are VfioErrors already and pass
// unchanged; a lost device connection is ENODEV for the lease; an exception
// without an errno is a bug and stays one (the server answers EIO and logs it).

/** How the device connection itself fails (vfio-user client, closed handle): the device is gone for the lease. */
const CONNECTION_LOST = new Set(['ECONNRESET', 'ENOTCONN', 'EPIPE', 'EPROTO', 'ERR_DEVLEASE_CLOSED']);

/** Longest device reason passed on or logged: a device's words are not trusted to be short. */
const MAX_REASON = 300;

import { VfioError } from '../errors.js';
export interface DeviceRefusal {
  /** What the lease client gets. */
  error: VfioError;
  /** One log line about it. */
  line: string;
}

/**
 * The refusal to pass on for an error a device call threw, or null when it is not a device refusal
 * (a broker VfioError, or a bug: rethrow those as they are). `what` names the request, e.g.
 * "REGION_WRITE region 2 +0x0 (2 bytes)".
 */
export function deviceRefusal(err: unknown, what: string): DeviceRefusal | null {
  if (err instanceof VfioError || !(err instanceof Error)) return null;
  const e = err as Error & { code?: unknown; errno?: unknown; reason?: unknown };
  const code = typeof e.code === 'string' ? e.code : null;
  const words = oneLine(typeof e.reason === 'string' && e.reason !== '' ? e.reason : err.message);
  if (code !== null && CONNECTION_LOST.has(code)) {
    const error = new VfioError('ENODEV', `${what}: the device connection is gone (${words})`);
    return { error, line: `${what}: device connection gone: ${words}` };
  }
  const errno = typeof e.errno === 'number' ? Math.abs(e.errno) : 0;
  if (code === null || !Number.isInteger(errno) || errno <= 0) return null;
  return {
    error: new VfioError(code, `${what}: the device refused it: ${words}`, errno),
    line: `${what}: device refused with ${code} (${errno}): ${words}`,
  };
}

function oneLine(text: string): string {
  const flat = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return flat.length > MAX_REASON ? `${flat.slice(0, MAX_REASON)}…` : flat;
}
