// Who owns the simulated device: one vfio-user connection at a time, taken
// when its VERSION succeeds (Sa1Frontend.negotiate), never at connect. A
// connection that never speaks must not hold the device: one made before the
// broker started kept the broker out for good (it was refused EBUSY at its
// VERSION and exited; a reconnecting one would have retried for ever).
//
// A VERSION that finds an owner waits up to `handoverMs` for that owner's
// disconnect to finish (a restarting broker is not refused while its old
// connection is being torn down), then takes the seat if it is free and is
// refused EBUSY if anyone holds it — the owner it waited for, or another
// connection that waited too and got there first.

import { VfioError } from '../../errors.js';
import type { ConnectionInfo } from '../../vfio/user/device-model.js';

export interface Owner {
  id: number;
  /** As SO_PEERCRED saw it at connect. */
  pid: number;
}

interface Seated extends Owner {
  /** Resolves once this owner's disconnect has finished. */
  gone: Promise<void>;
}

export class OwnerSeat {
  readonly #handoverMs: number;
  #owner: Seated | null = null;
  #waiting = 0;

  constructor(handoverMs: number) {
    this.#handoverMs = handoverMs;
  }

  get owner(): Owner | null {
    return this.#owner ? { id: this.#owner.id, pid: this.#owner.pid } : null;
  }

  /** VERSIONs waiting for the current owner's disconnect. */
  get waiting(): number {
    return this.#waiting;
  }

  /**
   * Take the seat for `conn` (its VERSION), or throw EBUSY; the returned release() frees it (idempotent).
   * `hungUp`: whether the connection's peer is gone. One that hung up while its VERSION waited takes nothing:
   * its disconnect runs only after the VERSION (requests end in order), so it would hold the seat, and refuse a
   * live VERSION waiting with it, until then.
   */
  async take(conn: ConnectionInfo, hungUp: () => boolean = () => false): Promise<() => void> {
    const current = this.#owner;
    if (current) {
      let timer: NodeJS.Timeout | undefined;
      this.#waiting++;
      try {
        await Promise.race([
          current.gone,
          new Promise((r) => {
            timer = setTimeout(r, this.#handoverMs);
            timer.unref();
          }),
        ]);
      } finally {
        clearTimeout(timer);
        this.#waiting--;
      }
    }
    if (hungUp()) throw new VfioError('ECONNRESET', 'the connection closed during VERSION');
    const holder = this.#owner;
    if (holder) {
      throw new VfioError(
        'EBUSY',
        `SA-1 already has an owner (connection ${holder.id}, pid ${holder.pid}); one owner at a time`,
      );
    }
    let markGone!: () => void;
    const me: Seated = {
      id: conn.id,
      pid: conn.cred.pid,
      gone: new Promise<void>((r) => {
        markGone = r;
      }),
    };
    this.#owner = me;
    return () => {
      if (this.#owner === me) this.#owner = null;
      markGone();
    };
  }
}
