// Errors on the vfio-user path, in the one error model (src/errors.ts): every
// one carries `code` (an errno name, or 'EPROTO' for a peer that broke the
// protocol) and `errno`, as native errors do.
import { DevleaseError, errnoName, errnoNumber, ProtocolError } from '../../errors.js';

export { errnoName, errnoNumber, ProtocolError };

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
