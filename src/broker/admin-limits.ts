// What admin connections may cost the broker (admin.ts): how many are open, in
// all and per uid, and how long one may sit without a request. Refusals and
// idle closes are logged rate-limited, as the lease sockets' admission does
// (util/admission.ts): a script reconnecting in a loop costs a few lines per 10 s.

import { RateLimitedLog } from '../sys/rate-limited-log.js';
import { PerUidCount } from '../util/per-uid-count.js';

/**
 * Each connection is a socket, a send buffer of up to ~1 MiB (ADMIN_MAX_REPLY) and a reply backlog
 * (ADMIN_REPLY_HARD_LIMIT): without a bound, a leaky script or a hostile admin-group member opening them in a
 * loop ran the broker out of descriptors. 300 s outlasts any pause between a person's requests on one
 * connection; the CLI and scripts connect per request (adminRequest). A connection with a request in progress (a
 * reset, an upgrade) is never idle.
 */
export interface AdminLimits {
  maxConnections: number;
  maxConnectionsPerUid: number;
  idleMs: number;
}
export const ADMIN_LIMITS: Readonly<AdminLimits> = {
  maxConnections: 64,
  maxConnectionsPerUid: 16,
  idleMs: 300_000,
};

export class AdminConnectionLimits {
  readonly limits: AdminLimits;
  readonly #count = new PerUidCount();
  readonly #log: RateLimitedLog;

  constructor(limits: Partial<AdminLimits>, log: (line: string) => void) {
    this.limits = { ...ADMIN_LIMITS, ...limits };
    this.#log = new RateLimitedLog(log, { burst: 5, intervalMs: 10_000 });
  }

  /**
   * Count a connection of `uid` until the returned release() (idempotent), or refuse it: null, and `refused`
   * gets the reason (logged). `force`: counted whatever the count (a connection handed over in an upgrade).
   */
  admit(uid: number, pid: number, force: boolean, refused: (why: string) => void): (() => void) | null {
    const { maxConnectionsPerUid: perUid, maxConnections: total } = this.limits;
    const taken = this.#count.take(uid, perUid, total, force);
    if (taken.ok) return taken.release;
    const why =
      taken.limit === 'uid'
        ? `uid ${uid} has ${taken.held} admin connections open (at most ${perUid} per uid)`
        : `${taken.held} admin connections are open (at most ${total})`;
    this.#log.log(`refused uid ${uid}`, `admin socket: refused a connection of pid ${pid}: ${why}`);
    refused(why);
    return null;
  }

  /**
   * A timer that calls `close` after idleMs, restarted by each arm() (disarm() while a request is in
   * progress). `postpone()` true: not now (an upgrade's hold: the connection is about to be handed over).
   */
  idleTimer(uid: number, pid: number, close: () => void, postpone: () => boolean) {
    let timer: NodeJS.Timeout | undefined;
    const t = {
      arm: () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          if (postpone()) return t.arm();
          this.#log.log(
            `idle uid ${uid}`,
            `admin socket: closed a connection of uid ${uid} (pid ${pid}): no request in ${this.limits.idleMs} ms`,
          );
          close();
        }, this.limits.idleMs);
        timer.unref();
      },
      disarm: () => clearTimeout(timer),
    };
    return t;
  }
}
