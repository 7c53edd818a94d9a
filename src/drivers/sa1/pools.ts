// Resource pools of the SA-1 driver: one IOVA window per queue slot, and
// device-memory granules handed out as contiguous runs, and the queues themselves
// (free, stuck, clean): what the driver may lease and what a grant must reset first.

import type { IovaRange } from '../../device/device.js';

/** IOVA windows: slot i is [base0 + i*size, +size), aligned to `size`, above the broker's own low 4 GiB. */
export class WindowSlots {
  readonly #size: bigint;
  readonly #base0: bigint;

  constructor(size: bigint, slots: number, ranges: IovaRange[]) {
    this.#size = size;
    const low = 1n << 32n; // below this the broker maps its own buffers (firmware image)
    this.#base0 = ((low + size - 1n) / size) * size;
    const last = this.#base0 + BigInt(slots) * size - 1n;
    if (!ranges.some((r) => r.start <= this.#base0 && last <= r.last)) {
      throw new Error(
        `iova windows [0x${this.#base0.toString(16)}, 0x${last.toString(16)}] do not fit the device's IOVA ranges ` +
          ranges.map((r) => `[0x${r.start.toString(16)}, 0x${r.last.toString(16)}]`).join(' '),
      );
    }
  }

  /** Slot i's window; a slot belongs to queue i, so the queue pool already makes it exclusive. */
  take(slot: number): { base: bigint; size: bigint } {
    return { base: this.#base0 + BigInt(slot) * this.#size, size: this.#size };
  }
}

/** Device-memory granules: first-fit contiguous runs. */
export class Granules {
  readonly #granule: bigint;
  readonly #free: boolean[];

  constructor(total: bigint, granule: bigint) {
    this.#granule = granule;
    this.#free = Array.from({ length: Number(total / granule) }, () => true);
  }

  take(n: number): { offset: bigint; size: bigint } | null {
    let run = 0;
    for (let i = 0; i < this.#free.length; i++) {
      run = this.#free[i] ? run + 1 : 0;
      if (run === n) {
        const first = i - n + 1;
        for (let j = first; j <= i; j++) this.#free[j] = false;
        return { offset: BigInt(first) * this.#granule, size: BigInt(n) * this.#granule };
      }
    }
    return null;
  }

  /** Mark a range taken (a broker upgrade rebuilding the pool from the leases it took over). */
  reserve(range: { offset: bigint; size: bigint }): void {
    const first = Number(range.offset / this.#granule);
    for (let j = first; j < first + Number(range.size / this.#granule); j++) this.#free[j] = false;
  }

  give(range: { offset: bigint; size: bigint }): void {
    const first = Number(range.offset / this.#granule);
    const n = Number(range.size / this.#granule);
    for (let j = first; j < first + n; j++) this.#free[j] = true;
  }
}

/**
 * The queues: which are free to lease, which are stuck (a reset that did not finish: never
 * leased again by this driver, whatever the broker does with the lease that held them — a grant whose
 * activation timed out gives its queue back with release()), and which are clean (reset by this driver and
 * not enabled since: reclaim's quiesce or scrub paid the reset, so the next grant needs none of its own), and
 * which were prepared at their reclaim (the device holds their queue page's next slice fd: the next grant of one
 * asks the device for none).
 *
 * take() order: the most recently prepared free queue (LIFO, so with a steady churn of a few leases the few
 * prepared fds the cap allows are the ones granted next), then the lowest clean one (no reset at grant), then
 * the lowest. A stuck queue is never free.
 */
export class QueuePool {
  #free: number[] = [];
  readonly #stuck = new Set<number>();
  readonly #clean = new Set<number>();
  /** Queues prepared at reclaim, most recent last; each checked against the device when taken. */
  #prepared: number[] = [];

  /** A fresh boot: nothing stuck, clean or prepared yet (fill() makes the free list once the device is up). */
  forget(): void {
    this.#stuck.clear();
    this.#clean.clear();
    this.#prepared = [];
  }

  /** Every queue of `numQueues` free but the stuck ones and those `held` (an upgrade's leases). */
  fill(numQueues: number, held: ReadonlySet<number | null> = new Set()): void {
    this.#free = Array.from({ length: numQueues }, (_, i) => i).filter(
      (q) => !this.#stuck.has(q) && !held.has(q),
    );
  }

  /** The device is lost: nothing to lease and nothing known clean until the next boot. */
  empty(): void {
    this.#clean.clear();
    this.#prepared = [];
    this.#free = [];
  }

  /**
   * A free queue in take() order, or undefined. `prepared(q)`: whether the device still holds q's prepared
   * slice fd (it drops them on a revoke, reset, new connection or handover); one it no longer holds is only clean.
   */
  take(prepared: (q: number) => boolean = () => false): number | undefined {
    for (let i = this.#prepared.length - 1; i >= 0; i--) {
      const q = this.#prepared[i]!;
      // One the device no longer holds is forgotten; one prepared but not free yet (its reclaim marks it
      // before it gives it back) stays for a later take().
      if (!prepared(q)) this.#prepared.splice(i, 1);
      else if (this.#remove(q)) {
        this.#prepared.splice(i, 1);
        return q;
      }
    }
    const clean = this.#free.find((q) => this.#clean.has(q));
    if (clean === undefined) return this.#free.shift();
    this.#remove(clean);
    return clean;
  }

  /**
   * A queue take() gave whose grant failed before it was used: first in line again, and first among the
   * prepared (take() asks the device whether it still holds the queue's fd, so one that holds none is passed).
   */
  untake(q: number): void {
    this.#free.unshift(q);
    this.#markPrepared(q);
  }

  /** A reclaimed queue, free again unless it is stuck (or already free). */
  give(q: number): void {
    if (!this.#free.includes(q) && !this.#stuck.has(q)) {
      this.#free.push(q);
      this.#free.sort((a, b) => a - b);
    }
  }

  /** A queue whose reset did not finish: out of the pool for the life of this driver. */
  quarantine(q: number): void {
    this.#stuck.add(q);
    this.#free = this.#free.filter((f) => f !== q);
    this.#prepared = this.#prepared.filter((p) => p !== q);
  }

  get freeCount(): number {
    return this.#free.length;
  }

  get stuck(): number[] {
    return [...this.#stuck];
  }

  get clean(): number[] {
    return [...this.#clean];
  }

  /** Whether `q` was clean; it no longer is (a grant is about to enable it). */
  takeClean(q: number): boolean {
    return this.#clean.delete(q);
  }

  /** `q` is about to be reset or enabled: no longer known clean. */
  notClean(q: number): void {
    this.#clean.delete(q);
  }

  markClean(q: number): void {
    this.#clean.add(q);
  }

  /** `q` is clean and its reclaim prepared its slice fd: the next take() prefers it over the others. */
  markPrepared(q: number): void {
    if (this.#clean.has(q)) this.#markPrepared(q);
  }

  /** Nothing is known clean or prepared any more (a device reset or recovery will reset every queue anyway). */
  forgetClean(): void {
    this.#clean.clear();
    this.#prepared = [];
  }

  /** The prepared queues, most recent last (tests, status). */
  get prepared(): number[] {
    return [...this.#prepared];
  }

  #markPrepared(q: number): void {
    this.#prepared = this.#prepared.filter((p) => p !== q);
    this.#prepared.push(q);
  }

  /** Take `q` out of the free list: whether it was there. */
  #remove(q: number): boolean {
    const i = this.#free.indexOf(q);
    if (i < 0) return false;
    this.#free.splice(i, 1);
    return true;
  }

  /** As an upgrade's handover left them (see stuck and clean). */
  adopt(stuck: number[], clean: number[]): void {
    this.#stuck.clear();
    for (const q of stuck) this.#stuck.add(q);
    this.#clean.clear();
    for (const q of clean) this.#clean.add(q);
  }
}
