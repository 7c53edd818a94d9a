// A message whose fds this process could not take (ReceivedRecord.fdsLost: its fd table full, EMFILE; or a
// security module refusing them, EACCES). The message itself came whole — on the stream the kernel reads its
// bytes whatever became of its fds — so the framing holds and the peer did nothing wrong: that one message
// fails, the connection stays. Before, it was read as "more fds than max_msg_fds" and the peer cut off: a
// simulator at its fd limit cut off the broker (every lease reclaimed), and a broker at its limit would have
// dropped its device over the next reply carrying a slice fd.
import { ERRNO, VfioError, VfioUserCallError } from '../../errors.js';
import { monotonicMs } from '../../sys/clock.js';
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

/** At most LOG_BURST lines per server per LOG_INTERVAL_MS; the rest are counted, and the count written after. */
const LOG_BURST = 5;
const LOG_INTERVAL_MS = 10_000;

interface LogWindow {
  start: number;
  written: number;
  suppressed: number;
}

/**
 * One window per server (keyed by its config, shared by its connections): a full fd table refuses every request
 * with fds until it has room, and a client retrying would otherwise write a line per request. (src/vfio may not
 * use src/util's RateLimitedLog; this is its shape without the timer: the count of a window is written at the
 * first line after it.)
 */
const windows = new WeakMap<object, LogWindow>();

/** The refusal of a request whose fds were lost (`lost`, the reader's error), logged rate-limited. */
export function requestFdsLost(
  config: { log(message: string): void },
  connection: number,
  msg: VfioUserMessage,
  lost: Error,
): FdsLostError {
  const { code, errno } = lost as Error & { code?: string; errno?: number };
  const err = new FdsLostError(code ?? 'EMFILE', lost.message, errno ?? ERRNO.EMFILE, { cause: lost });
  const now = monotonicMs();
  let w = windows.get(config);
  if (!w || now - w.start >= LOG_INTERVAL_MS) {
    if (w?.suppressed)
      config.log(`vfio-user server: ${w.suppressed} more request(s) refused, their fds not received`);
    w = { start: now, written: 0, suppressed: 0 };
    windows.set(config, w);
  }
  if (w.written >= LOG_BURST) {
    w.suppressed++;
    return err;
  }
  w.written++;
  const what = `${P.commandName(msg.command)} (msg_id ${msg.msgId})`;
  config.log(`vfio-user connection ${connection}: ${what} refused ${err.code}: ${err.reason}`);
  return err;
}
