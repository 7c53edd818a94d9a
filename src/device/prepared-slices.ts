// Slice fds asked of a device ahead of the grant that hands them out (Device.prepareSliceFds): a reclaim
// readies the next lease's slices once the old ones are revoked, so the grant gets them without a device
// round trip. One entry per range (region, offset, length), each the promise of the device's answer.
//
// A prepared fd is handed out only while it can still be the slice's current memory: every slice fd this
// device handed out is remembered with its range, and a revoke of one drops what is prepared over its slice
// (a revoke of an fd of unknown range drops everything). Nothing prepared survives its
// connection (the owner of this table clears it). Dropped entries close their fds when they arrive.

import type { Fd } from '../sys/fd.js';

export interface SliceRange {
  offset: bigint;
  length: bigint;
}

interface Entry {
  region: number;
  range: SliceRange;
  fd: Promise<Fd | null>;
}

/** At most this many prepared slice fds per device (SA-1: one per queue page and granule at most). */
export const MAX_PREPARED_SLICES = 1024;

const keyOf = (region: number, r: SliceRange): string => `${region}:${r.offset}:${r.length}`;
const overlaps = (a: SliceRange, b: SliceRange): boolean =>
  a.offset < b.offset + b.length && b.offset < a.offset + a.length;

export class PreparedSlices {
  readonly #entries = new Map<string, Entry>();
  /** The range of every slice fd handed out (prepared or asked fresh), for revokes. */
  readonly #ranges = new WeakMap<Fd, { region: number; range: SliceRange }>();

  get size(): number {
    return this.#entries.size;
  }

  /** Ask `fetch` for `ranges` unless one of them is prepared already or the table is full. */
  prepare(region: number, ranges: SliceRange[], fetch: () => Promise<Fd[]>): void {
    if (ranges.length === 0 || this.#entries.size + ranges.length > MAX_PREPARED_SLICES) return;
    if (ranges.some((r) => this.#entries.has(keyOf(region, r)))) return;
    const all = fetch().then(
      (fds) => {
        if (fds.length === ranges.length) return fds;
        for (const fd of fds) fd.close();
        return null;
      },
      () => null,
    );
    ranges.forEach((range, i) => {
      const entry: Entry = { region, range, fd: all.then((fds) => fds?.[i] ?? null) };
      this.#entries.set(keyOf(region, range), entry);
    });
  }

  /**
   * The prepared fds of exactly `ranges`, taken out of the table (the caller owns them), or null when any of
   * them is not prepared (what is prepared stays: the device answers the same memory) or its answer failed.
   */
  async take(region: number, ranges: SliceRange[]): Promise<Fd[] | null> {
    const entries = ranges.map((r) => this.#entries.get(keyOf(region, r)));
    if (entries.length === 0 || entries.some((e) => !e)) return null;
    for (const r of ranges) this.#entries.delete(keyOf(region, r));
    const fds = await Promise.all(entries.map((e) => e!.fd));
    if (fds.some((fd) => fd === null)) {
      for (const fd of fds) fd?.close();
      return null;
    }
    return fds as Fd[];
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
