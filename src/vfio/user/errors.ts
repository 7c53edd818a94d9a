// Errors on the vfio-user path. Every one carries `code` (an errno name or
// 'EPROTO' for a peer that broke the protocol) and `errno`, as native errors do.
import { ERRNO } from './device-model.js';

/** errnos beyond the device model's set that the client may see in replies or raise itself. */
const EXTRA_ERRNO: Record<string, number> = {
  ESRCH: 3,
  EINTR: 4,
  ENXIO: 6,
  E2BIG: 7,
  ENOTTY: 25,
  EPIPE: 32,
  EPROTO: 71,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ECONNRESET: 104,
  ENOTCONN: 107,
};

const BY_NUMBER = new Map<number, string>();
for (const [name, n] of [...Object.entries(EXTRA_ERRNO), ...Object.entries(ERRNO)]) BY_NUMBER.set(n, name);

/** 'EINVAL' for 22; 'E<n>' for numbers without a name here. */
export function errnoName(errno: number): string {
  return BY_NUMBER.get(errno) ?? `E${errno}`;
}

export function errnoNumber(code: string): number {
  return (ERRNO as Record<string, number>)[code] ?? EXTRA_ERRNO[code] ?? 0;
}

export interface VfioUserErrorFields {
  code: string;
  errno: number;
  /** The vfio-user command the error is about, when there is one. */
  command?: string;
  /** The server's own words, when it sent any (devlease "error_reason" extension). */
  reason?: string;
}

export type VfioUserCallError = Error & VfioUserErrorFields;

export function vfioUserError(code: string, message: string, command?: string): VfioUserCallError {
  const err = new Error(message) as VfioUserCallError;
  err.code = code;
  err.errno = errnoNumber(code);
  if (command !== undefined) err.command = command;
  return err;
}

/** A message that breaks the protocol: the receiver closes that connection. */
export class ProtocolError extends Error {
  readonly code = 'EPROTO';
  readonly errno = 71;
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}
