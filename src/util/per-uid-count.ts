// Connections counted in all and per uid, each count with a limit: what the
// broker bounds the lease sockets' connections waiting for VERSION with
// (util/admission.ts) and the admin socket's connections (broker/admin-limits.ts).
// One count here, and each caller says in its own words (its config keys) why
// a connection was refused.

/** Why take() refused: `uid` had `held` already (its limit), or `held` were counted in all (the total's). */
export interface PerUidRefusal {
  ok: false;
  limit: 'uid' | 'total';
  held: number;
}

export interface PerUidTaken {
  ok: true;
  /** No longer counted. Idempotent: a connection's several ways of ending (closed, timed out, done) may each call it. */
  release(): void;
}

export class PerUidCount {
  readonly #perUid = new Map<number, number>();
  #total = 0;

  /** Counted now: in all, or of one uid. */
  count(uid?: number): number {
    return uid === undefined ? this.#total : (this.#perUid.get(uid) ?? 0);
  }

  /**
   * Count one more of `uid` unless it would pass `perUid` (checked first) or `total`. `force`: counted whatever
   * the counts (a connection already admitted elsewhere, e.g. handed over by another broker).
   */
  take(uid: number, perUid: number, total: number, force = false): PerUidTaken | PerUidRefusal {
    const mine = this.#perUid.get(uid) ?? 0;
    if (!force && mine >= perUid) return { ok: false, limit: 'uid', held: mine };
    if (!force && this.#total >= total) return { ok: false, limit: 'total', held: this.#total };
    this.#perUid.set(uid, mine + 1);
    this.#total++;
    let counted = true;
    return {
      ok: true,
      release: () => {
        if (!counted) return;
        counted = false;
        this.#total--;
        const n = (this.#perUid.get(uid) ?? 1) - 1;
        if (n > 0) this.#perUid.set(uid, n);
        else this.#perUid.delete(uid);
      },
    };
  }
}
