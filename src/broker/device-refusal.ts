// A lease request the device refused reaches the lease client as the
// device's own refusal: its errno and its words (a REGION_WRITE the device
// answered EINVAL is EINVAL for the client too, not a generic EIO).
// Refusals the broker makes itself are VfioErrors already and pass
// unchanged; a lost device connection is ENODEV for the lease; an exception
// without an errno is a bug and stays one (the server answers EIO and logs it).
// A session's device calls go through leaseDeviceCall, which also logs each
// refusal, rate-limited.

import { VfioError } from '../errors.js';
import type { Lease } from './lease.js';
import type { LeaseTable } from './leases.js';

/** How the device connection itself fails (vfio-user client, closed handle): the device is gone for the lease. */
const CONNECTION_LOST = new Set(['ECONNRESET', 'ENOTCONN', 'EPIPE', 'EPROTO', 'ERR_DEVLEASE_CLOSED']);

/** Longest device reason passed on or logged: a device's words are not trusted to be short. */
const MAX_REASON = 300;

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

/**
 * A device call for a lease's session request. A refusal by the device reaches the client with the device's
 * errno and reason, and is logged as one line, rate-limited per lease and request (a client retrying in a loop
 * must not flood the log). `detail` may be a function: it is then only called for a refusal (a DMA_MAP's range
 * formatted on every call was a measurable share of the broker's work per map).
 */
export async function leaseDeviceCall<T>(
  table: LeaseTable,
  lease: Lease,
  op: string,
  detail: string | (() => string),
  call: () => Promise<T>,
): Promise<T> {
  try {
    return await call();
  } catch (err) {
    const refusal = deviceRefusal(err, `${op} ${typeof detail === 'string' ? detail : detail()}`);
    if (!refusal) throw err;
    table.refusals.log(
      `lease ${lease.id} ${op}`,
      `lease ${lease.id} (pid ${lease.ctx.pid}): ${refusal.line}`,
    );
    throw refusal.error;
  }
}
