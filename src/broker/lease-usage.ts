// What each uid holds, kept up to date as leases change instead of walked on
// every request: the policy's limits are checked on each grant and DMA map,
// and a walk over every lease there made a grant O(leases) — at 1,000 leases
// a measurable share of the broker's CPU per lease (docs/performance-history.md,
// "Issue 16, fifth pass: CPU per lease"). A lease counts in its uid's account while it is
// in the table and live (active or revoking), with its mappings; anything
// else counts nothing, as the walk did.

import type { LeaseMapping } from './lease.js';
import type { Usage } from './policy.js';

/** Per-uid totals of the live leases in the lease table. */
export class UsageAccounts {
  readonly #byUid = new Map<number, Usage>();

  /** The totals of `uid` (a fresh object: the caller may add to it). */
  of(uid: number): Usage {
    const u = this.#byUid.get(uid);
    return u ? { ...u } : { leases: 0, mappedBytes: 0n, mappings: 0 };
  }

  /** Add (sign 1) or take away (sign -1) one lease's share, or (sign 1) the change of one. */
  apply(uid: number, share: Usage, sign: 1 | -1): void {
    if (share.leases === 0 && share.mappings === 0 && share.mappedBytes === 0n) return;
    const u = this.#byUid.get(uid) ?? { leases: 0, mappedBytes: 0n, mappings: 0 };
    u.leases += sign * share.leases;
    u.mappings += sign * share.mappings;
    u.mappedBytes += BigInt(sign) * share.mappedBytes;
    if (u.leases === 0 && u.mappings === 0 && u.mappedBytes === 0n) this.#byUid.delete(uid);
    else this.#byUid.set(uid, u);
  }
}

/** A lease's mappings, keyed by the client's IOVA, with their byte total kept as they change. */
export class LeaseMappings extends Map<bigint, LeaseMapping> {
  #bytes = 0n;
  #relayed = 0;
  /** Called after every change (the lease re-counts its share). */
  onChange: () => void = () => {};
  /** Called for each relayed mapping (no fd) that goes: the broker's DmaRelay forgets it. */
  onRelayedGone: (m: LeaseMapping) => void = () => {};

  get bytes(): bigint {
    return this.#bytes;
  }

  /** How many of the mappings are relayed (no fd). */
  get relayed(): number {
    return this.#relayed;
  }

  override set(iova: bigint, m: LeaseMapping): this {
    const old = super.get(iova);
    super.set(iova, m);
    this.#bytes += m.size - (old?.size ?? 0n);
    this.#relayed += (m.relayed ? 1 : 0) - (old?.relayed ? 1 : 0);
    if (old?.relayed && old !== m) this.onRelayedGone(old);
    this.onChange();
    return this;
  }

  override delete(iova: bigint): boolean {
    const old = super.get(iova);
    if (!old) return false;
    super.delete(iova);
    this.#bytes -= old.size;
    if (old.relayed) {
      this.#relayed--;
      this.onRelayedGone(old);
    }
    this.onChange();
    return true;
  }

  override clear(): void {
    const relayed = this.#relayed ? [...super.values()].filter((m) => m.relayed) : [];
    this.#relayed = 0;
    super.clear();
    for (const m of relayed) this.onRelayedGone(m);
    this.#bytes = 0n;
    this.onChange();
  }
}
