// Retrying what failed on the broker's side of the device connection. A
// device command whose sendmsg fails with ENOMEM, ENOBUFS, EAGAIN or EINTR
// never left the broker (stream-socket.ts throws only when nothing of the
// message was written; a later failure ends the connection instead): the
// device did nothing, and the same command may simply be sent again. Reclaim
// retries such steps a few times before it counts them as failed, because a
// failed step quarantines the lease — a single transient allocation failure
// (the fail-nth walk's revoke with a deadline) once left a lease quarantined
// for good, its queue never leased again, although the device was fine.
// Errors the device answered with, timeouts and a lost connection are not
// retried here: they say something about the device.
import { isSysError } from '../errors.js';

/** errnos of a local send that may succeed when tried again. */
const LOCAL_TRANSIENT = new Set(['ENOMEM', 'ENOBUFS', 'EAGAIN', 'EINTR']);

/** Tries, and the pause before the first retry (doubled each time: 10, 20, 40 ms). */
export const LOCAL_RETRY_ATTEMPTS = 4;
export const LOCAL_RETRY_FIRST_DELAY_MS = 10;

/** Whether `err` is a syscall of this process that failed transiently (a SysError, not a device's answer). */
export function isLocalTransient(err: unknown): boolean {
  return isSysError(err) && LOCAL_TRANSIENT.has(err.code);
}

/**
 * Runs `fn`, running it again (after a short, growing pause) while it fails with a local transient errno, at
 * most LOCAL_RETRY_ATTEMPTS times in all; the last error is thrown. `fn` must be safe to repeat after such a
 * failure (reclaim's steps are: quiesce, unwire, unmap and revoke each leave the device as asked, however
 * often they are sent).
 */
export async function retryLocalTransient<T>(fn: () => Promise<T>): Promise<T> {
  let delay = LOCAL_RETRY_FIRST_DELAY_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= LOCAL_RETRY_ATTEMPTS || !isLocalTransient(err)) throw err;
    }
    await new Promise((r) => setTimeout(r, delay));
    delay *= 2;
  }
}
