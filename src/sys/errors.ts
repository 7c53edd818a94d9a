// Error shapes of src/sys. Syscall failures (from the addon or from here)
// carry `code` ('EPIPE'), `errno` (32) and `syscall` ('sendmsg'); misuse
// carries an ERR_DEVLEASE_* code and is thrown before any syscall.
import { constants as osConstants } from 'node:os';

export class SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
  constructor(syscall: string, code: string, message?: string) {
    const errno = (osConstants.errno as Record<string, number>)[code] ?? 0;
    super(`${syscall}: ${message ?? code}`);
    this.name = 'SysError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** True for an error thrown by a syscall (addon or SysError), optionally with the given code. */
export function isSysError(err: unknown, code?: string): err is SysError {
  if (!(err instanceof Error)) return false;
  const e = err as Partial<SysError>;
  return (
    typeof e.code === 'string' && typeof e.syscall === 'string' && (code === undefined || e.code === code)
  );
}

export type MisuseCode = 'ERR_DEVLEASE_INVALID_ARG' | 'ERR_DEVLEASE_CLOSED' | 'ERR_DEVLEASE_TOO_MANY_FDS';

export function misuse(code: MisuseCode, message: string): Error & { code: MisuseCode } {
  return Object.assign(new TypeError(message), { code });
}

/** The error for using a handle after close(). */
export function closedError(what: string): Error & { code: MisuseCode } {
  return Object.assign(new Error(`${what} is closed`), { code: 'ERR_DEVLEASE_CLOSED' as const });
}
