// What one request came to — its reply, or the error its error reply carries — apart from the connection that
// sends it: the model's part run with the request's fds (closed once it is done with them, unless the model
// took them), and the message that goes back for either outcome. connection.ts decides when each runs, where
// the message goes and what a failure means for the connection.
import { ERRNO, VfioError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import { encodeErrorReply, encodeReply, type VfioUserMessage, writeHeader } from './codec.js';
import * as P from './protocol.js';
import { closeAll, type Reply } from './request-replies.js';

/** What a request came to: its reply, or the error its error reply carries. */
export type Outcome = { ok: true; reply: Reply } | { ok: false; err: unknown };

/** `take` of a request that came without fds (one for all: no closure made for those). */
const takeNone = (): Fd[] => [];

/**
 * Runs `call`, the model's part of a request, with the request's `fds`: `take()` hands them over to it, and
 * they are closed once it is done unless it took them. The outcome comes synchronously when `call` answered
 * so; a throw or a rejection is `failed(err)`.
 */
export function runWithFds(
  fds: Fd[],
  call: (take: () => Fd[]) => Reply | Promise<Reply>,
  failed: (err: unknown) => Outcome,
): Outcome | Promise<Outcome> {
  let taken = false;
  const take =
    fds.length === 0
      ? takeNone
      : (): Fd[] => {
          taken = true;
          return fds;
        };
  let result: Reply | Promise<Reply>;
  try {
    result = call(take);
  } catch (err) {
    if (!taken) closeAll(fds);
    return failed(err);
  }
  if (!(result instanceof Promise)) {
    if (!taken) closeAll(fds);
    return { ok: true, reply: result };
  }
  return result.then(
    (reply): Outcome => {
      if (!taken) closeAll(fds);
      return { ok: true, reply };
    },
    (err) => {
      if (!taken) closeAll(fds);
      return failed(err);
    },
  );
}

/**
 * The reply message to `msg` carrying `reply` (its fds go with it, the caller's to send). If it cannot be
 * built, the reply's fds are closed and the error thrown.
 */
export function replyMessage(msg: VfioUserMessage, reply: Reply): Uint8Array {
  const { payload, framed, fds } = reply;
  try {
    return framed
      ? writeHeader(framed, msg.msgId, msg.command, P.VFIO_USER_F_TYPE_REPLY)
      : encodeReply(msg.msgId, msg.command, payload);
  } catch (err) {
    if (fds) closeAll(fds);
    throw err;
  }
}

/**
 * The error reply to `msg` for `err`: a VfioError's errno, EIO for anything else (a bug: the connection logs
 * it). `wantsReasons`: the client proposed devlease "error_reason", so the reply carries the reason too.
 */
export function errorReplyMessage(msg: VfioUserMessage, err: unknown, wantsReasons: boolean): Uint8Array {
  const errno = err instanceof VfioError ? err.errno : ERRNO.EIO;
  return encodeErrorReply(msg.msgId, msg.command, errno, wantsReasons ? reasonFor(err) : undefined);
}

function reasonFor(err: unknown): string {
  if (!(err instanceof VfioError)) return 'internal error in the device (logged by the server)';
  return err.reason;
}
