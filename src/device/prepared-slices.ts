// Slice fds asked of a device ahead of the grant that hands them out (Device.prepareSliceFds): a reclaim
// readies the next lease's slices once the old ones are revoked, so the grant gets them without a device
// round trip (issue 16). One entry per range (region, offset, length), each the promise of the device's answer.
//
// A prepared fd is handed out only while it can still be the slice's current memory: every slice fd this
// device handed out is remembered with its range, and a revoke of one drops what is prepared over its slice
// (a revoke of an fd of unknown range drops everything). Nothing prepared survives its connection (the owner
// of this table clears it). Dropped entries close their fds when they arrive.
//
// Bounded: the caller names a cap (lifetime.prepared_slice_fds) and a prepare that would hold more is not
// asked at all — the table never holds more than the cap, nor MAX_PREPARED_SLICES whatever the cap.

import type { Fd } from '../sys/fd.js';

export interface SliceRange {
  offset: bigint;
  length: bigint;
}

interface Entry {
  region: number;
  range: SliceRange;
  fd: Promise<Fd | null>;
  /** Answered: the fd is in this process (what `held` counts). */
  arrived: boolean;
}

/** The most prepared slice fds one device holds whatever its cap says (the config's upper bound too). */
export const MAX_PREPARED_SLICES = 1024;

const keyOf = (region: number, r: SliceRange): string => `${region}:${r.offset}:${r.length}`;
const overlaps = (a: SliceRange, b: SliceRange): boolean =>
  a.offset < b.offset + b.length && b.offset < a.offset + a.length;

export class PreparedSlices {
  readonly #entries = new Map<string, Entry>();
  /** The range of every slice fd handed out (prepared or asked fresh), for revokes. */
  readonly #ranges = new WeakMap<Fd, { region: number; range: SliceRange }>();

  /** Prepared fds held or on their way (what the cap bounds). */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Prepared fds this process holds now: answered, not yet taken or dropped. A count of the process's own
   * descriptors matches it at any turn of the event loop (the answer's fd and this flag come in the same one),
   * which `size` does not while a request is on its way.
   */
  get held(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.arrived) n++;
    return n;
  }

  /**
   * Ask `fetch` for `ranges` unless one of them is prepared already or that would hold more than `cap`
   * prepared fds. Whether it asked.
   */
  prepare(region: number, ranges: SliceRange[], cap: number, fetch: () => Promise<Fd[]>): boolean {
    const limit = Math.min(cap, MAX_PREPARED_SLICES);
    if (ranges.length === 0 || this.#entries.size + ranges.length > limit) return false;
    if (ranges.some((r) => this.#entries.has(keyOf(region, r)))) return false;
    const all = fetch().then(
      (fds) => {
        if (fds.length === ranges.length) return fds;
        for (const fd of fds) fd.close();
        return null;
      },
      () => null,
    );
    const entries = ranges.map((range, i): [string, Entry] => [
      keyOf(region, range),
      { region, range, fd: all.then((fds) => fds?.[i] ?? null), arrived: false },
    ]);
    for (const [key, e] of entries) this.#entries.set(key, e);
    // A failed answer holds no fd: its entries leave at once, not one of the cap's places until a grant.
    void all.then((fds) => {
      for (const [key, e] of entries) {
        if (this.#entries.get(key) !== e) continue; // taken or dropped meanwhile: not held here
        if (fds) e.arrived = true;
        else this.#entries.delete(key);
      }
    });
    return true;
  }

  /** Whether every one of `ranges` is prepared (answered or on its way). */
  has(region: number, ranges: SliceRange[]): boolean {
    return ranges.length > 0 && ranges.every((r) => this.#entries.has(keyOf(region, r)));
  }

  /**
   * The prepared fds of exactly `ranges`, taken out of the table (the caller owns them): null at once when
   * any of them is not prepared (what is prepared stays), so the caller asks the device in the same tick;
   * else a promise of them, or of null when the device's answer failed.
   */
  take(region: number, ranges: SliceRange[]): Promise<Fd[] | null> | null {
    if (!this.has(region, ranges)) return null;
    const entries = ranges.map((r) => this.#entries.get(keyOf(region, r))!);
    for (const r of ranges) this.#entries.delete(keyOf(region, r));
    return Promise.all(entries.map((e) => e.fd)).then((fds) => {
      if (fds.every((fd) => fd !== null)) return fds as Fd[];
      for (const fd of fds) fd?.close();
      return null;
    });
  }

  /** The device handed out `fds` for `ranges` (in order): a later revoke of one drops what is prepared over it. */
  handedOut(region: number, ranges: SliceRange[], fds: Fd[]): void {
    fds.forEach((fd, i) => {
      const range = ranges[i];
      if (range) this.#ranges.set(fd, { region, range });
    });
  }

  /** `fd` is being revoked: what is prepared over its slice may be its old memory. */
  revoking(fd: Fd): void {
    const known = this.#ranges.get(fd);
    if (known) this.dropOver(known.region, [known.range]);
    else this.clear();
  }

  /** Drop (and close, once answered) what is prepared over any of `ranges` of `region`. */
  dropOver(region: number, ranges: SliceRange[]): void {
    for (const [key, e] of this.#entries) {
      if (e.region === region && ranges.some((r) => overlaps(r, e.range))) this.#drop(key, e);
    }
  }

  /** Drop everything prepared. */
  clear(): void {
    for (const [key, e] of this.#entries) this.#drop(key, e);
  }

  #drop(key: string, e: Entry): void {
    this.#entries.delete(key);
    void e.fd.then((fd) => fd?.close());
  }
}
