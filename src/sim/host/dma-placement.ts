// Where the simulator's front end maps an owner's DMA memory (issue 16, sixteenth pass: docs/PERFORMANCE.md).
// A reclaim unmaps a lease's whole IOVA window with one DMA_UNMAP, and the front end drops those maps with one
// mmap call per run of adjacent ranges of one protection (Mapping.unmapMany), each a TLB flush on the other
// CPU running the device worker. Left to the kernel, the maps of leases set up at the same time interleave
// (each lands just below the last mapping made, whoever's it was), so a reclaimed lease's 64 maps took 64
// calls. Here a map goes right after the map before it in IOVA order (or right before the one after it), and
// a map with neither starts a run in a slot of its own, in address space found free at the first such map.
// Every place is taken exactly or refused (Mapping.map `at`, MAP_FIXED_NOREPLACE; a kernel before 4.17 takes
// it as a hint): a range in use by anything (a live map, the zero pages of one unmapped but not yet
// collected, anyone else's memory) is never replaced; the map then goes where the kernel puts it, as before.

import { type Fd, type MapOptions, Mapping, native, PAGE_SIZE } from '../../sys/index.js';

const PAGE = BigInt(PAGE_SIZE);

/** Address space for run slots, looked for once (reserved and released: nothing is held). */
const REGION_BYTES = 64n << 30n;
/**
 * The room between two slots: a run that outgrows it goes on into the next slot's space while that is free,
 * and otherwise starts again in a slot of its own.
 */
const SLOT_BYTES = 256n << 20n;
const SLOTS = Number(REGION_BYTES / SLOT_BYTES);
/**
 * Slots tried for a new run before the map is left to the kernel. A slot is refused while anything is in it:
 * after the slots wrap around, one a reclaimed lease used stays refused until its zero pages are collected.
 */
const SLOT_TRIES = 4;
const IN_USE = Symbol('in use');

/** The maps next to a new one in IOVA order: the one ending where it starts, the one starting where it ends. */
export interface Neighbours {
  before: Mapping | null;
  after: Mapping | null;
}

export interface PlacementCounts {
  /** Maps that went where they were placed. */
  placed: number;
  /**
   * Maps the kernel placed: every place tried was in use, none could be tried (no free range found, a map
   * larger than a slot with no neighbour), a try failed otherwise, or the kernel took the place as a hint.
   */
  unplaced: number;
}

export class DmaPlacement {
  /** undefined: not looked for yet; null: none found (every new run is left to the kernel). */
  #base: bigint | null | undefined = undefined;
  #nextSlot = 0;
  readonly counts: PlacementCounts = { placed: 0, unplaced: 0 };

  /** Map [offset, offset+length) of `fd`, guarded (dma-mmap.ts), next to `around` when that space is free. */
  map(
    fd: Fd | number,
    opts: { offset: number; length: number; prot: 'r' | 'rw' },
    around: Neighbours,
  ): Mapping {
    const want = { ...opts, guard: true };
    const length = BigInt(opts.length);
    const nextTo: bigint[] = [];
    // Only where the two would be one run (same protection) and the place is page-aligned.
    const { before, after } = around;
    if (before && before.prot === opts.prot) nextTo.push(before.address + BigInt(before.length));
    if (after && after.prot === opts.prot && after.address > length) {
      const at = after.address - length;
      if (at !== nextTo[0]) nextTo.push(at); // a hole the map fits exactly: one place, tried once
    }
    for (const at of nextTo) {
      if (at % PAGE !== 0n) continue;
      const got = this.#mapAt(fd, want, at);
      if (got !== IN_USE) return got ?? this.#unplaced(fd, want);
    }
    const base = length <= SLOT_BYTES ? this.#regionBase() : null;
    for (let i = 0; base !== null && i < SLOT_TRIES; i++) {
      const at = base + BigInt(this.#nextSlot) * SLOT_BYTES;
      this.#nextSlot = (this.#nextSlot + 1) % SLOTS;
      const got = this.#mapAt(fd, want, at);
      if (got !== IN_USE) return got ?? this.#unplaced(fd, want);
    }
    return this.#unplaced(fd, want);
  }

  /** The map at `at`; IN_USE when something is there; null when it failed otherwise (the plain map says why). */
  #mapAt(fd: Fd | number, want: MapOptions, at: bigint): Mapping | typeof IN_USE | null {
    try {
      const mapping = Mapping.map(fd, { ...want, at });
      // A kernel before 4.17 takes the address as a hint: the map is valid wherever it went.
      if (mapping.address === at) this.counts.placed++;
      else this.counts.unplaced++;
      return mapping;
    } catch (err) {
      return (err as { code?: string }).code === 'EEXIST' ? IN_USE : null;
    }
  }

  #unplaced(fd: Fd | number, want: MapOptions): Mapping {
    const mapping = Mapping.map(fd, want);
    this.counts.unplaced++;
    return mapping;
  }

  #regionBase(): bigint | null {
    if (this.#base === undefined) {
      try {
        this.#base = native.findFreeRange(Number(REGION_BYTES));
      } catch (err) {
        // No such range (an address-space limit, ENOMEM): runs start where the kernel puts them. Asked once:
        // a limit stays, and a simulator under it should not pay a failing mmap per map.
        if ((err as { syscall?: string }).syscall !== 'mmap') throw err;
        this.#base = null;
      }
    }
    return this.#base;
  }
}
