// When the audit's scans run (auditor.ts). A scan is synchronous on the broker's event loop, so none starts
// before the last one's end + 9 × its duration: the audit takes at most ~10% of the broker's time however slow
// /proc is (a TCG guest: 50-500 ms a scan). Requests (a lease's control request, the period, a release
// waiter's poll) are coalesced into one scan, run on the next turn of the event loop or once the bound allows:
// never on a request's path.

/** The least pause after a failed scan before the next (a walk that fails at once would otherwise spin). */
const FAILED_SCAN_PAUSE_MS = 1000;
/** A scan that keeps failing is logged once a minute (status has the count). */
const FAILURE_LOG_EVERY_MS = 60_000;

export class ScanPacer {
  #scheduled = false;
  /** No scan starts before this (performance.now(): monotonic, a clock step moves it not). */
  #nextAllowed = 0;
  /** When a failed scan was last logged; reset by a scan that succeeds. */
  #failureLoggedAt = Number.NEGATIVE_INFINITY;
  #timer: NodeJS.Timeout | null = null;

  /**
   * `scan`: one scan (it calls scanned() or failed()); `logFailure`: a scan requested here threw (logged
   * rather than thrown: off any request's path it would be an uncaught exception, the broker's end).
   */
  constructor(
    private readonly scan: () => void,
    private readonly logFailure: (err: Error) => void,
  ) {}

  /** A coalesced scan, soon: on the next turn of the event loop, or once the duty-cycle bound allows. */
  request(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    const run = () => {
      this.#scheduled = false;
      try {
        this.scan();
      } catch (err) {
        // The first failure after a scan that succeeded, then once a minute. The periodic scan and the release
        // waiters' polls ask again.
        const now = performance.now();
        if (now >= this.#failureLoggedAt + FAILURE_LOG_EVERY_MS) {
          this.logFailure(err as Error);
          this.#failureLoggedAt = now;
        }
      }
    };
    const wait = this.#nextAllowed - performance.now();
    if (wait > 0) setTimeout(run, wait).unref();
    else setImmediate(run);
  }

  /** A scan that took `us` succeeded. */
  scanned(us: number): void {
    this.#failureLoggedAt = Number.NEGATIVE_INFINITY;
    this.#nextAllowed = performance.now() + Math.ceil((9 * us) / 1000);
  }

  /**
   * A scan failed (the broker out of fds or memory) after `spentMs`: paced too, or the release waiters' polls
   * would run one after another, each as long as the walk got before it failed.
   */
  failed(spentMs: number): void {
    this.#nextAllowed = performance.now() + Math.max(9 * spentMs, FAILED_SCAN_PAUSE_MS);
  }

  /** A scan every `periodMs` (requested: within the bound) until stopPeriodic(). */
  startPeriodic(periodMs: number): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.request(), periodMs);
    this.#timer.unref();
  }

  stopPeriodic(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
