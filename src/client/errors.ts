// Errors the client library raises: `code` (an errno name or ERR_DEVLEASE_*),
// and `reason`, the broker's own words when it gave any.

export interface LeaseError extends Error {
  code: string;
  reason: string;
  errno?: number;
}

export function leaseError(code: string, reason: string, cause?: unknown): LeaseError {
  const err = new Error(`${code}: ${reason}`, cause === undefined ? undefined : { cause }) as LeaseError;
  err.name = 'LeaseError';
  err.code = code;
  err.reason = reason;
  return err;
}

/** Wrap an error from the vfio-user layer so it carries `code` and the broker's `reason`. */
export function fromCallError(what: string, err: unknown): LeaseError {
  const e = err as Error & { code?: string; errno?: number; reason?: string };
  const reason = e.reason ?? e.message;
  const out = leaseError(e.code ?? 'EIO', `${what}: ${reason}`, err);
  if (e.errno !== undefined) out.errno = e.errno;
  return out;
}
