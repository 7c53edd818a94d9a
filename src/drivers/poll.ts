// The one way a driver waits for the device: read a register until it says
// done, at most `timeoutMs`, then fail loudly — ETIMEDOUT, naming what was
// awaited and the last value read (the model is ioat_reset() in the kernel's
// VFIO selftest drivers). A wait that gives up silently would let the caller
// carry on as if the device had finished: a queue still resetting would be
// leased again.

import { constants } from 'node:os';
import { VfioError } from '../errors.js';

export interface PollOptions<T> {
  /** What is awaited, for the error: "queue 3 reset (Q_CTRL.RESET to clear)". */
  what: string;
  /** One read of the device. Its errors end the wait and propagate unchanged. */
  read: () => Promise<T>;
  /** Whether the value read means done. */
  done: (value: T) => boolean;
  /** Bound on the whole wait. */
  timeoutMs: number;
  /** Pause between reads (default 1 ms). */
  intervalMs?: number;
  /** The last value, as the error shows it (default: numbers in hex). */
  format?: (value: T) => string;
}

/** A device wait that ran out: `code` ETIMEDOUT, and the last value read. */
export class PollTimeoutError<T = unknown> extends VfioError {
  constructor(
    readonly what: string,
    readonly lastValue: T,
    readonly timeoutMs: number,
    shown: string,
  ) {
    super(
      'ETIMEDOUT',
      `${what} did not finish in ${timeoutMs} ms (last read ${shown})`,
      constants.errno.ETIMEDOUT,
    );
    this.name = 'PollTimeoutError';
  }
}

const hex = (v: unknown): string => (typeof v === 'number' ? `0x${(v >>> 0).toString(16)}` : String(v));

/**
 * Read until `done`, returning the value that said so. Reads at least once, and once more after the
 * deadline passes (a slow event loop must not turn a finished wait into a timeout).
 */
export async function pollUntil<T>(opts: PollOptions<T>): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  const interval = opts.intervalMs ?? 1;
  for (let reads = 0; ; reads++) {
    const expired = Date.now() >= deadline;
    const value = await opts.read();
    if (opts.done(value)) return value;
    if (expired) throw new PollTimeoutError(opts.what, value, opts.timeoutMs, (opts.format ?? hex)(value));
    // The first read often goes out with the write that started the work (pipelined) and finds it just
    // short of done: read once more at once (one round trip later) before pausing between reads.
    if (reads === 0) await new Promise((r) => setImmediate(r));
    else await new Promise((r) => setTimeout(r, interval));
  }
}
