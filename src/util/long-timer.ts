// A timer for delays past what setTimeout can hold. Node stores a delay in a
// signed 32-bit int: anything from 2^31 ms (24.8 days) up is taken as 1 ms
// with a TimeoutOverflowWarning, so a long revoke deadline fired at once.
// Here the delay is waited in chunks of at most MAX_TIMEOUT_MS, each re-armed
// against the absolute due time, and the callback runs once, at or after it.

/** The longest delay setTimeout honours. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export class LongTimer {
  readonly dueAt: number;
  readonly #fn: () => void;
  readonly #chunkMs: number;
  readonly #ref: boolean;
  #timer: NodeJS.Timeout | null = null;

  /**
   * Call `fn` once `ms` have passed. `chunkMs` (default MAX_TIMEOUT_MS) is the longest single wait, smaller
   * only to test the re-arming; `ref: false` (the default) does not hold the process open.
   */
  constructor(ms: number, fn: () => void, opts: { chunkMs?: number; ref?: boolean } = {}) {
    if (!Number.isFinite(ms) || ms < 0)
      throw new RangeError(`delay must be a non-negative number, got ${ms}`);
    const chunk = opts.chunkMs ?? MAX_TIMEOUT_MS;
    if (!Number.isInteger(chunk) || chunk < 1 || chunk > MAX_TIMEOUT_MS) {
      throw new RangeError(`chunkMs must be an integer from 1 to ${MAX_TIMEOUT_MS}, got ${chunk}`);
    }
    this.dueAt = Date.now() + ms;
    this.#fn = fn;
    this.#chunkMs = chunk;
    this.#ref = opts.ref ?? false;
    this.#arm();
  }

  get pending(): boolean {
    return this.#timer !== null;
  }

  cancel(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #arm(): void {
    const left = this.dueAt - Date.now();
    this.#timer = setTimeout(
      () => {
        if (this.dueAt - Date.now() > 0) return this.#arm();
        this.#timer = null;
        this.#fn();
      },
      Math.min(Math.max(left, 0), this.#chunkMs),
    );
    if (!this.#ref) this.#timer.unref();
  }
}
