// Errors the client library raises, in the one error model (src/errors.ts):
// `code` (an errno name or ERR_DEVLEASE_*), `errno` when the code is an errno,
// and `reason`, the broker's own words when it gave any (a field end to end:
// it arrives as a field of the vfio-user error reply, never parsed from text).
import { DevleaseError } from '../errors.js';

export class LeaseError extends DevleaseError {
  declare readonly reason: string;
  constructor(code: string, reason: string, options: { cause?: unknown; errno?: number } = {}) {
    super(code, `${code}: ${reason}`, { reason, cause: options.cause, errno: options.errno });
    this.name = 'LeaseError';
  }
}

export function leaseError(code: string, reason: string, cause?: unknown): LeaseError {
  return new LeaseError(code, reason, { cause });
}

/** Wrap an error from the vfio-user layer so it carries `code`, `errno` and the broker's `reason`. */
export function fromCallError(what: string, err: unknown): LeaseError {
  const e = err as Error & { code?: string; errno?: number; reason?: string };
  const reason = e.reason ?? e.message;
  return new LeaseError(e.code ?? 'EIO', `${what}: ${reason}`, { cause: err, errno: e.errno });
}
