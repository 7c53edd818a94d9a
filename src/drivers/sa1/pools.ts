// Resource pools of the SA-1 driver: one IOVA window per queue slot, and
// device-memory granules handed out as contiguous runs.

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
