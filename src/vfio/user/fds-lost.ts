// A message whose fds this process could not take (ReceivedRecord.fdsLost: its fd table full, EMFILE; or a
// security module refusing them, EACCES). The message itself came whole — on the stream the kernel reads its
// bytes whatever became of its fds — so the framing holds and the peer did nothing wrong: that one message
// fails, the connection stays. Before, it was read as "more fds than max_msg_fds" and the peer cut off: a
// simulator at its fd limit cut off the broker (every lease reclaimed), and a broker at its limit would have
// dropped its device over the next reply carrying a slice fd.
import { ERRNO, VfioError, VfioUserCallError } from '../../errors.js';
import { monotonicMs } from '../../sys/clock.js';
import { RateLimitedLog } from '../../sys/rate-limited-log.js';
import type { VfioUserMessage } from './codec.js';
import * as P from './protocol.js';

/** A request refused because its fds did not arrive: answered with the errno, logged (rate-limited) on receipt. */
export class FdsLostError extends VfioError {}

/** The rejection of a call whose reply came without its fds (the reply is consumed; the call is not retried). */
export function replyFdsLost(command: number, lost: Error): VfioUserCallError {
  const name = P.commandName(command);
  const { code, errno } = lost as Error & { code?: string; errno?: number };
  return new VfioUserCallError(code ?? 'EMFILE', `${name}: the reply came, but ${lost.message}`, {
    command: name,
    errno,
    cause: lost,
  });
}

/**
 * One log per server (keyed by its config, shared by its connections): a full fd table refuses every request
 * with fds until it has room, and a client retrying would otherwise write a line per request. At most 5 lines
 * per server per 10 s; the rest are counted, and the count written once the 10 s are over.
 */
const logs = new WeakMap<object, RateLimitedLog>();

/** The refusal of a request whose fds were lost (`lost`, the reader's error), logged rate-limited. */
export function requestFdsLost(
  config: { log(message: string): void },
  connection: number,
  msg: VfioUserMessage,
  lost: Error,
): FdsLostError {
  const { code, errno } = lost as Error & { code?: string; errno?: number };
  const err = new FdsLostError(code ?? 'EMFILE', lost.message, errno ?? ERRNO.EMFILE, { cause: lost });
  let log = logs.get(config);
  if (!log) {
    log = new RateLimitedLog((line) => config.log(line), {
      burst: 5,
      intervalMs: 10_000,
      now: monotonicMs,
      summary: (_key, n) => `vfio-user server: ${n} more request(s) refused, their fds not received`,
    });
    logs.set(config, log);
  }
  const what = `${P.commandName(msg.command)} (msg_id ${msg.msgId})`;
  log.log('fds lost', `vfio-user connection ${connection}: ${what} refused ${err.code}: ${err.reason}`);
  return err;
}

/** Write the server's pending "N more" count now and forget its log (its server closed: no line after that). */
export function flushFdsLostLog(config: object): void {
  logs.get(config)?.flush();
  logs.delete(config);
}
