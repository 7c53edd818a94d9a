// Admission of lease connections before their VERSION. Each accepted
// connection costs a socket and a pidfd before it has asked for anything, so
// connections still waiting for VERSION are counted — in all and per uid — and
// one past either limit is refused as soon as it is accepted. A connection
// admitted must complete VERSION within the deadline or is closed. Refusals and
// closures are logged rate-limited: an attacker reconnecting in a loop costs a
// few lines per 10 s, not one per connection.

import { PerUidCount } from '../util/per-uid-count.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import type { BrokerConfig } from './config.js';

export interface Admitted {
  /** VERSION completed (granted or refused) or the connection ended: it no longer counts. Idempotent. */
  done(): void;
}

export class Admission {
  readonly #limits: BrokerConfig['sockets'];
  readonly #count = new PerUidCount();
  readonly #log: RateLimitedLog;

  constructor(limits: BrokerConfig['sockets'], log: (line: string) => void) {
    this.#limits = limits;
    this.#log = new RateLimitedLog(log, { burst: 5, intervalMs: 10_000 });
  }

  /** Connections waiting for their VERSION: in all, and of one uid. */
  pending(uid?: number): number {
    return this.#count.count(uid);
  }

  /**
   * Count a new connection of `uid` until done(), or refuse it (null; logged) when it would pass a limit.
   * `onDeadline` runs if it is still pending after sockets.version_timeout_ms.
   */
  admit(uid: number, pid: number, onDeadline: () => void): Admitted | null {
    const taken = this.#count.take(uid, this.#limits.maxPendingPerUid, this.#limits.maxPending);
    if (!taken.ok) {
      const why =
        taken.limit === 'uid'
          ? `${taken.held} of its connections have not completed VERSION (sockets.max_pending_per_uid = ${this.#limits.maxPendingPerUid})`
          : `${taken.held} connections have not completed VERSION (sockets.max_pending = ${this.#limits.maxPending})`;
      this.#log.log(`refused uid ${uid}`, `refused a connection from uid ${uid} (pid ${pid}): ${why}`);
      return null;
    }
    const ms = this.#limits.versionTimeoutMs;
    const timer = setTimeout(() => {
      this.#log.log(
        `deadline uid ${uid}`,
        `closed a connection from uid ${uid} (pid ${pid}): no VERSION completed in ${ms} ms (sockets.version_timeout_ms)`,
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
