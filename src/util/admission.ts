// Admission of vfio-user connections before their VERSION: the broker's lease
// sockets (broker/client-sessions.ts) and any VfioUserServer given limits (the
// simulator's socket). Each accepted connection costs a socket (the broker's,
// a pidfd too) before it has asked for anything, so connections still waiting
// for VERSION are counted — in all and per uid — and one past either limit is
// refused as soon as it is accepted. A connection admitted must complete
// VERSION within the deadline or is closed. Refusals and closures are logged
// rate-limited: an attacker reconnecting in a loop costs a few lines per 10 s,
// not one per connection.

import { RateLimitedLog } from '../sys/rate-limited-log.js';
import { PerUidCount } from './per-uid-count.js';

export interface AdmissionLimits {
  /** A connection that has not completed VERSION this long after it was accepted is closed. */
  versionTimeoutMs: number;
  /** Connections not yet past VERSION, in all ... */
  maxPending: number;
  /** ... and of one uid. */
  maxPendingPerUid: number;
}

/** What each limit is called where it is set (the broker's config keys, a server's options): the lines name it. */
export type AdmissionNames = Readonly<Record<keyof AdmissionLimits, string>>;

export interface Admitted {
  /** VERSION completed (granted or refused) or the connection ended: it no longer counts. Idempotent. */
  done(): void;
}

export class Admission {
  readonly #limits: AdmissionLimits;
  readonly #names: AdmissionNames;
  readonly #count = new PerUidCount();
  readonly #log: RateLimitedLog;

  constructor(limits: AdmissionLimits, names: AdmissionNames, log: (line: string) => void) {
    for (const key of ['versionTimeoutMs', 'maxPending', 'maxPendingPerUid'] as const) {
      const v = limits[key];
      if (!Number.isSafeInteger(v) || v < 1)
        throw new RangeError(`${names[key]} must be a positive integer, got ${v}`);
    }
    this.#limits = limits;
    this.#names = names;
    this.#log = new RateLimitedLog(log, { burst: 5, intervalMs: 10_000 });
  }

  /** Connections waiting for their VERSION: in all, and of one uid. */
  pending(uid?: number): number {
    return this.#count.count(uid);
  }

  /**
   * Count a new connection of `uid` until done(), or refuse it (null; logged) when it would pass a limit.
   * `onDeadline` runs if it is still pending after versionTimeoutMs.
   */
  admit(uid: number, pid: number, onDeadline: () => void): Admitted | null {
    const taken = this.#count.take(uid, this.#limits.maxPendingPerUid, this.#limits.maxPending);
    if (!taken.ok) {
      const why =
        taken.limit === 'uid'
          ? `${taken.held} of its connections have not completed VERSION (${this.#names.maxPendingPerUid} = ${this.#limits.maxPendingPerUid})`
          : `${taken.held} connections have not completed VERSION (${this.#names.maxPending} = ${this.#limits.maxPending})`;
      this.#log.log(`refused uid ${uid}`, `refused a connection from uid ${uid} (pid ${pid}): ${why}`);
      return null;
    }
    const ms = this.#limits.versionTimeoutMs;
    const timer = setTimeout(() => {
      this.#log.log(
        `deadline uid ${uid}`,
        `closed a connection from uid ${uid} (pid ${pid}): no VERSION completed in ${ms} ms (${this.#names.versionTimeoutMs})`,
      );
      onDeadline();
    }, ms);
    timer.unref();
    return {
      done: () => {
        clearTimeout(timer);
        taken.release();
      },
    };
  }

  /** Write pending "suppressed" summaries (shutdown). */
  flush(): void {
    this.#log.flush();
  }
}
