// A log that writes at most `burst` lines per key per interval and counts the
// rest: a client retrying a refused request in a loop costs a few lines and
// one "suppressed K" summary, not a line per request. The summary is written
// when the key's interval ends (a timer that does not hold the process open),
// or at the key's next line after that, or on flush().
//
// In src/sys, not src/util, because src/vfio uses it too (fds-lost.ts) and may
// import only src/sys and src/errors.ts (docs/ARCHITECTURE.md, import
// directions). It imports nothing.

export interface RateLimitOptions {
  /** Lines written per key per interval. Default 5. */
  burst?: number;
  /** Interval length in ms, counted from a key's first line. Default 10000. */
  intervalMs?: number;
  /** Most keys tracked at once; lines for further keys share one overflow key. Default 256. */
  maxKeys?: number;
  /** The clock, in ms. Default Date.now. */
  now?: () => number;
  /**
   * The line saying how many lines of `key` were suppressed in the last `seconds`. Default
   * "KEY: suppressed N more line(s) in the last S s".
   */
  summary?: (key: string, suppressed: number, seconds: number) => string;
}

interface Window {
  start: number;
  written: number;
  suppressed: number;
  timer: NodeJS.Timeout | null;
}

/** The key lines are counted under when `maxKeys` keys are already tracked. */
export const OVERFLOW_KEY = '(other keys)';

export class RateLimitedLog {
  readonly #sink: (line: string) => void;
  readonly #burst: number;
  readonly #intervalMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  readonly #summary: (key: string, suppressed: number, seconds: number) => string;
  readonly #windows = new Map<string, Window>();

  constructor(sink: (line: string) => void, opts: RateLimitOptions = {}) {
    this.#sink = sink;
    this.#burst = opts.burst ?? 5;
    this.#intervalMs = opts.intervalMs ?? 10_000;
    this.#maxKeys = opts.maxKeys ?? 256;
    this.#now = opts.now ?? Date.now;
    this.#summary =
      opts.summary ??
      ((key, n, secs) => `${key}: suppressed ${n} more line(s) in the last ${secs.toFixed(1)} s`);
    for (const [name, v] of [
      ['burst', this.#burst],
      ['intervalMs', this.#intervalMs],
      ['maxKeys', this.#maxKeys],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 1)
        throw new RangeError(`${name} must be a positive integer, got ${v}`);
    }
  }

  /** Write `line` unless `key` has used its lines for this interval; returns whether it was written. */
  log(key: string, line: string): boolean {
    const now = this.#now();
    let w = this.#windows.get(key);
    if (w && now - w.start >= this.#intervalMs) {
      this.#end(key, w);
      w = undefined;
    }
    if (!w) {
      if (this.#windows.size >= this.#maxKeys) this.#sweep(now);
      // Bounded memory whatever the keys: past the limit, new keys share one window.
      if (this.#windows.size >= this.#maxKeys && key !== OVERFLOW_KEY) return this.log(OVERFLOW_KEY, line);
      w = { start: now, written: 0, suppressed: 0, timer: null };
      this.#windows.set(key, w);
    }
    if (w.written < this.#burst) {
      w.written++;
      this.#sink(line);
      return true;
    }
    w.suppressed++;
    if (!w.timer) {
      const ended = w;
      ended.timer = setTimeout(() => this.#end(key, ended), Math.max(0, w.start + this.#intervalMs - now));
      ended.timer.unref();
    }
    return false;
  }

  /** Write every pending "suppressed K" summary now and start every key afresh (e.g. at shutdown). */
  flush(): void {
    for (const [key, w] of [...this.#windows]) this.#end(key, w);
  }

  #sweep(now: number): void {
    for (const [key, w] of [...this.#windows]) if (now - w.start >= this.#intervalMs) this.#end(key, w);
  }

  #end(key: string, w: Window): void {
    if (w.timer) clearTimeout(w.timer);
    w.timer = null;
    if (this.#windows.get(key) === w) this.#windows.delete(key);
    if (w.suppressed > 0) {
      const secs = Math.max(0, this.#now() - w.start) / 1000;
      this.#sink(this.#summary(key, w.suppressed, secs));
      w.suppressed = 0;
    }
  }
}
