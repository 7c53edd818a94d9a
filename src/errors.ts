// devlease's one error model (after undici's lib/core/errors.js): every error
// devlease raises is a DevleaseError with
//   code     an errno name ('EINVAL'), 'EPROTO' for a broken protocol, or
//            ERR_DEVLEASE_* for misuse caught before any syscall;
//   errno    the number of that errno name on this host (os.constants.errno,
//            never a typed-in table), or undefined for ERR_DEVLEASE_* codes;
//   syscall  the failing syscall, for errors of one (set by the addon too);
//   reason   the human reason alone, without the code, carried as a field
//            across threads and the wire and never re-parsed from `message`;
//   cause    the error this one wraps, if any.
// The subclasses only fix the shape of the message and the name.
// This file is the bottom of the tree: it imports only node: modules.

import { constants } from 'node:os';

/** The errno numbers of this host (Linux), by name: os.constants.errno. */
export const ERRNO = constants.errno;
export type ErrnoName = keyof typeof constants.errno;

const NUMBERS = ERRNO as Readonly<Record<string, number>>;
const NAMES = new Map<number, string>();
for (const [name, n] of Object.entries(NUMBERS)) {
  // Aliases (EWOULDBLOCK = EAGAIN, EDEADLOCK = EDEADLK, ENOTSUP = EOPNOTSUPP): the first name wins.
  if (!NAMES.has(n)) NAMES.set(n, name);
}

/** The number of errno `code` on this host, or undefined when `code` is not an errno name. */
export function errnoNumber(code: string): number | undefined {
  return Object.hasOwn(NUMBERS, code) ? NUMBERS[code] : undefined;
}

/** 'EINVAL' for 22; 'E<n>' for a number this host has no name for. */
export function errnoName(errno: number): string {
  return NAMES.get(errno) ?? `E${errno}`;
}

export interface DevleaseErrorOptions {
  /** The errno number; by default the one of `code` on this host. */
  errno?: number;
  syscall?: string;
  reason?: string;
  cause?: unknown;
}

export class DevleaseError extends Error {
  readonly code: string;
  readonly errno: number | undefined;
  readonly syscall?: string;
  readonly reason?: string;
  constructor(code: string, message: string, options: DevleaseErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DevleaseError';
    this.code = code;
    this.errno = options.errno ?? errnoNumber(code);
    if (options.syscall !== undefined) this.syscall = options.syscall;
    if (options.reason !== undefined) this.reason = options.reason;
  }
}

/**
 * A failed syscall: message "syscall: text". The addon throws these too (native/common.cc), so a
 * syscall error is the same class whether it came from C++ or from TypeScript.
 */
export class SysError extends DevleaseError {
  declare readonly syscall: string;
  constructor(syscall: string, code: string, message?: string, errno?: number) {
    super(code, `${syscall}: ${message ?? code}`, { syscall, errno: errno ?? errnoNumber(code) ?? 0 });
    this.name = 'SysError';
  }
}

/** True for an error thrown by a syscall (addon or SysError), optionally with the given code. */
export function isSysError(err: unknown, code?: string): err is SysError {
  return err instanceof SysError && (code === undefined || err.code === code);
}

export type MisuseCode =
  | 'ERR_DEVLEASE_INVALID_ARG'
  | 'ERR_DEVLEASE_CLOSED'
  | 'ERR_DEVLEASE_TOO_MANY_FDS'
  | 'ERR_DEVLEASE_GUARD_TABLE_FULL'
  | 'ERR_DEVLEASE_NO_LOOP';

/** Misuse caught before any syscall (a wrong argument, a closed handle): no errno. */
export class MisuseError extends DevleaseError {
  declare readonly code: MisuseCode;
  constructor(code: MisuseCode, message: string) {
    super(code, message);
    this.name = 'MisuseError';
  }
}

export function misuse(code: MisuseCode, message: string): MisuseError {
  return new MisuseError(code, message);
}

/** The error for using a handle after close(). */
export function closedError(what: string): MisuseError {
  return new MisuseError('ERR_DEVLEASE_CLOSED', `${what} is closed`);
}

/**
 * A refusal with a POSIX errno name and a human reason, e.g. new VfioError('EINVAL', 'iova outside window').
 * An errno from elsewhere (a device's own refusal, passed on) is given with its number:
 * new VfioError('ENOTTY', reason, 25). The message is "CODE: reason"; `reason` is the reason alone,
 * and that field (not the message) is what goes on the wire.
 */
export class VfioError extends DevleaseError {
  declare readonly errno: number;
  declare readonly reason: string;
  /** The vfio-user command the error is about, when there is one. */
  readonly command?: string;
  constructor(code: ErrnoName, reason: string);
  constructor(code: string, reason: string, errno: number, options?: { command?: string; cause?: unknown });
  constructor(code: string, reason: string, errno?: number, options?: { command?: string; cause?: unknown }) {
    const n = errno ?? errnoNumber(code);
    if (n === undefined || !Number.isInteger(n) || n <= 0 || n > 0xffff_ffff) {
      throw new RangeError(`VfioError ${code}: errno ${String(n)} is not a positive errno`);
    }
    super(code, `${code}: ${reason}`, { errno: n, reason, cause: options?.cause });
    this.name = 'VfioError';
    if (options?.command !== undefined) this.command = options.command;
  }
}

/** A message that breaks the protocol: the receiver closes that connection. */
export class ProtocolError extends DevleaseError {
  declare readonly errno: number;
  constructor(message: string) {
    super('EPROTO', message, { reason: message });
    this.name = 'ProtocolError';
  }
}

export interface VfioUserCallErrorOptions {
  /** The vfio-user command the error is about, when there is one. */
  command?: string;
  /** The errno number the peer sent (default: the number of `code` here). */
  errno?: number;
  /** The server's own words, when it sent any (devlease "error_reason" extension). */
  reason?: string;
  cause?: unknown;
}

/**
 * A vfio-user call that failed on this side of the wire (the peer refused it, did not answer, or the
 * connection went): the client's view of a refusal. Not a VfioError, which is a refusal this process makes.
 */
export class VfioUserCallError extends DevleaseError {
  readonly command?: string;
  constructor(code: string, message: string, options: VfioUserCallErrorOptions = {}) {
    super(code, message, {
      errno: options.errno || errnoNumber(code) || 0,
      reason: options.reason,
      cause: options.cause,
    });
    this.name = 'VfioUserCallError';
    if (options.command !== undefined) this.command = options.command;
  }
}

export function vfioUserError(code: string, message: string, command?: string): VfioUserCallError {
  return new VfioUserCallError(code, message, { command });
}
