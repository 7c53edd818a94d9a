// The wait between retries of a backoff loop (device reconnect, recovery):
// a timer that close() or a new event can cut short, and that reports when
// the next attempt is due (for `devlease status`).

export class BackoffSleep {
  #wait: { timer: NodeJS.Timeout; wake(): void } | null = null;
  /** When the pending wait ends (ISO time), or null when none is pending. */
  nextAttemptAt: string | null = null;

  /** Resolves after `ms`, or at once when wake() is called; one wait at a time. */
  sleep(ms: number): Promise<void> {
    this.wake();
    this.nextAttemptAt = new Date(Date.now() + ms).toISOString();
    return new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wait = null;
        this.nextAttemptAt = null;
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#wait = { timer, wake };
    });
  }

  /** End the pending wait now (idempotent). */
  wake(): void {
    this.#wait?.wake();
  }
}
