// The broker daemon's own log: pino, one JSON object per line on stderr
// (time, level, pid, msg), or human-readable lines through pino-pretty when
// asked or when stderr is a terminal. Writes are synchronous so a line said
// just before exit is not lost. The audit log is a separate stream (stdout
// or [audit] path) and never goes through here.
import { type Logger, pino } from 'pino';
import { PinoPretty } from 'pino-pretty';
import type { LogFormat, LogLevel } from '../broker/config.js';

export interface LogSettings {
  level: LogLevel;
  format: LogFormat;
}

/** A logger writing to `fd` (default stderr) as `settings` say; `isTTY` decides 'auto'. */
export function createLogger(settings: LogSettings, fd = 2, isTTY = Boolean(process.stderr.isTTY)): Logger {
  const pretty = settings.format === 'pretty' || (settings.format === 'auto' && isTTY);
  const options = { name: 'devlease', level: settings.level };
  if (pretty) {
    return pino(
      options,
      PinoPretty({ destination: fd, sync: true, colorize: isTTY, translateTime: 'SYS:standard' }),
    );
  }
  return pino(options, pino.destination({ dest: fd, sync: true }));
}

/**
 * The broker's `log(msg)` lines (reconnects, refusals, reloads, rate-limited peer errors): operational notes at
 * info. The daemon's own failures (start, device lost) are logged at error/fatal where they happen.
 */
export function brokerLine(logger: Logger): (msg: string) => void {
  return (msg) => logger.info(msg);
}
