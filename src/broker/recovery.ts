// Device recovery, one at a time. A hang, a reset behind the driver's back
// and the owner's `devlease reset` all come here; a request while a recovery
// runs joins it and gets its outcome. (Unserialized, two resets both loaded
// firmware at one IOVA and the second failed EEXIST; a reset racing a hang
// ended `recovery-failed`.) An attempt that fails is tried again after a
// backoff that doubles up to `backoffMaxMs`, until one succeeds: a device
// that hangs again during its recovery comes back without an operator. After
// `attempts` failures the recovery is reported failed (requests waiting on it
// get the error, grants stay suspended with the reason) but goes on trying at
// the longest backoff; a new request (the owner's `devlease reset`) tries at
// once. It stops only when the broker closes or the device connection is lost
// (reconnecting takes over). `devlease status` shows the state (status()),
// and boundMs: an estimate of how long a recovery may take before its outcome
// is reported, which `devlease reset` waits for (recoveryBoundMs()).

import { BackoffSleep } from '../util/backoff-sleep.js';
import type { BrokerConfig } from './config.js';

export type RecoveryCause = 'device-hang' | 'device-reset' | 'device-error' | 'owner-reset';

export interface RecoveryStatus {
  /**
   * idle: none running (the last one, if any, succeeded or was abandoned); recovering: trying; failed:
   * `attempts` attempts failed, and it keeps trying (nextAttemptAt) until the device is back.
   */
  state: 'idle' | 'recovering' | 'failed';
  /** What started the current (or last) recovery, and its reason. */
  cause: RecoveryCause | null;
  reason: string | null;
  /** When the state last changed (ISO time). */
  since: string | null;
  /** Attempts of the current (or last) recovery. */
  attempts: number;
  /** Why the last attempt failed. */
  lastError: string | null;
  /** When the next attempt is due, while waiting to retry. */
  nextAttemptAt: string | null;
  /** Requests that joined the current (or last) recovery instead of starting another. */
  joined: number;
  /**
   * An estimate of the longest a recovery may take before a request waiting on it is answered (the device
   * back, or the recovery reported failed), from the config and the deadlines: recoveryBoundMs().
   */
  boundMs: number;
}

/**
 * How long a recovery's steps may take, from their deadlines: the reclaim before the first attempt, and one
 * attempt (recovery-hooks.ts says what each counts and what it leaves out).
 */
export interface RecoveryDeadlines {
  prepareMs: number;
  attemptMs: number;
}

/**
 * An estimate of the longest a recovery may take before its outcome is reported: the reclaim, `attempts`
 * attempts, and the backoff between them (the first `backoffMs`, doubling up to `backoffMaxMs`). After the
 * last attempt the recovery is reported failed (and goes on trying), so no further wait counts. Joining one
 * in progress waits for less; joining a failed one waits for one more attempt, which this covers too. The
 * steps' parts are their deadlines (`d`), which leave some device waits out: an estimate, not a guarantee.
 */
export function recoveryBoundMs(opts: BrokerConfig['recovery'], d: RecoveryDeadlines): number {
  let backoff = 0;
  let delay = opts.backoffMs;
  for (let i = 1; i < opts.attempts; i++) {
    backoff += delay;
    delay = nextBackoffMs(opts, delay);
  }
  return d.prepareMs + opts.attempts * d.attemptMs + backoff;
}

/** The wait after `delay` (the recovery's loop and its estimate step through the same sequence). */
function nextBackoffMs(opts: BrokerConfig['recovery'], delay: number): number {
  return Math.min(delay * 2, opts.backoffMaxMs);
}

export interface RecoveryHooks {
  /** Before the first attempt: suspend grants, tell clients, reclaim every lease. */
  prepare(cause: RecoveryCause, why: string): Promise<void>;
  /** One attempt to bring the device back (the driver's recover()). */
  attempt(): Promise<void>;
  /** Stop now (the broker is closing, or the device connection is gone and reconnecting takes over). */
  abandoned(): boolean;
  attemptFailed(cause: RecoveryCause, err: Error, attempt: number, final: boolean): void;
  succeeded(cause: RecoveryCause, attempts: number): void;
  /** How long the reclaim and one attempt may take, from the config's, driver's and device's deadlines. */
  deadlines(): RecoveryDeadlines;
}

export class Recovery {
  readonly #opts: BrokerConfig['recovery'];
  readonly #hooks: RecoveryHooks;
  #status: Omit<RecoveryStatus, 'boundMs'> = {
    state: 'idle',
    cause: null,
    reason: null,
    since: null,
    attempts: 0,
    lastError: null,
    nextAttemptAt: null,
    joined: 0,
  };
  /** The retry loop, while one runs: resolves when it ends (null: the device is back). */
  #running: Promise<Error | null> | null = null;
  /** Requests waiting for the outcome: the recovery's end, or its being reported failed. */
  #waiters: ((err: Error | null) => void)[] = [];
  readonly #pause = new BackoffSleep();
  #closed = false;

  constructor(opts: BrokerConfig['recovery'], hooks: RecoveryHooks) {
    this.#opts = opts;
    this.#hooks = hooks;
  }

  /** The recovery in progress (resolves when it ends: back, or abandoned), or null. */
  get running(): Promise<Error | null> | null {
    return this.#running;
  }

  status(): RecoveryStatus {
    return { ...this.#status, boundMs: recoveryBoundMs(this.#opts, this.#hooks.deadlines()) };
  }

  /**
   * Recover the device, or join the recovery in progress. Resolves with null when the device is back, or
   * with the last attempt's error once the recovery is reported failed (or why it was abandoned); never
   * rejects. Joining a failed recovery makes its next attempt start now, and waits for that attempt.
   */
  request(cause: RecoveryCause, why: string): Promise<Error | null> {
    const outcome = new Promise<Error | null>((resolve) => this.#waiters.push(resolve));
    if (this.#running) {
      this.#status.joined++;
      if (this.#status.state === 'failed') this.#pause.wake();
      return outcome;
    }
    this.#status = {
      state: 'recovering',
      cause,
      reason: why,
      since: new Date().toISOString(),
      attempts: 0,
      lastError: null,
      nextAttemptAt: null,
      joined: 0,
    };
    this.#running = this.#run(cause, why).then((err) => {
      this.#running = null;
      this.#answer(err);
      return err;
    });
    return outcome;
  }

  #answer(err: Error | null): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w(err);
  }

  /** The device was booted from scratch (reconnected): a failed recovery's state is over. */
  deviceBooted(): void {
    if (this.#status.state === 'failed') this.#settle('idle');
  }

  /** Stop retrying: a backoff wait ends now; an attempt in progress finishes (its waits are bounded). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#pause.wake();
    await this.#running;
  }

  async #run(cause: RecoveryCause, why: string): Promise<Error | null> {
    try {
      await this.#hooks.prepare(cause, why);
    } catch (err) {
      // Reclaim does not throw; if it ever does, the device is still worth bringing back.
      this.#status.lastError = `preparing: ${(err as Error).message}`;
    }
    let delay = this.#opts.backoffMs;
    for (;;) {
      if (this.#closed || this.#hooks.abandoned()) return this.#abandon();
      const attempt = ++this.#status.attempts;
      try {
        await this.#hooks.attempt();
      } catch (e) {
        const err = e as Error;
        this.#status.lastError = err.message;
        // The `attempts`th failure reports the recovery failed; later ones are that failure going on.
        const final = attempt === this.#opts.attempts;
        this.#report(() => this.#hooks.attemptFailed(cause, err, attempt, final));
        if (attempt >= this.#opts.attempts) {
          if (final) this.#settle('failed');
          this.#answer(err);
        }
        await this.#sleep(delay);
        delay = nextBackoffMs(this.#opts, delay);
        continue;
      }
      if (this.#closed || this.#hooks.abandoned()) return this.#abandon();
      this.#settle('idle');
      this.#report(() => this.#hooks.succeeded(cause, attempt));
      return null;
    }
  }

  /**
   * A hook's report (audit, log, events): one that throws (a listener's bug) must not end the recovery's loop,
   * whose promise everyone joining it waits on; the device's state is what counts. Kept as the last error.
   */
  #report(f: () => void): void {
    try {
      f();
    } catch (err) {
      this.#status.lastError = `reporting: ${(err as Error)?.message ?? String(err)}`;
    }
  }

  #abandon(): Error {
    const err = new Error(
      this.#closed ? 'the broker is shutting down' : 'the device connection was lost during recovery',
    );
    this.#status.lastError = err.message;
    this.#settle('idle');
    return err;
  }

  #settle(state: RecoveryStatus['state']): void {
    this.#status.state = state;
    this.#status.since = new Date().toISOString();
    this.#status.nextAttemptAt = null;
  }

  async #sleep(ms: number): Promise<void> {
    const wait = this.#pause.sleep(ms);
    this.#status.nextAttemptAt = this.#pause.nextAttemptAt;
    await wait;
    this.#status.nextAttemptAt = null;
  }
}
