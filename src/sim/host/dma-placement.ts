// Where the simulator's front end maps an owner's DMA memory (issue 16, sixteenth pass: docs/performance-history.md).
// A reclaim unmaps a lease's whole IOVA window with one DMA_UNMAP, and the front end drops those maps with one
// mmap call per run of adjacent ranges of one protection (Mapping.unmapMany), each a TLB flush on the other
// CPU running the device worker. Left to the kernel, the maps of leases set up at the same time interleave
// (each lands just below the last mapping made, whoever's it was), so a reclaimed lease's 64 maps took 64
// calls. Here a map goes right after the map before it in IOVA order (or right before the one after it), and
// a map with neither starts a run in a slot (of address space found free when the first such map is made)
// where no other run has a live map, right after what the slot's last run left there: a new run never starts
// where another is growing, and a buffer mapped and unmapped over and over stays in one place.
// Every place is taken exactly or refused (Mapping.map `at`, MAP_FIXED_NOREPLACE; a kernel before 4.17 takes
// it as a hint): a range in use by anything (a live map, the zero pages of one unmapped but not yet
// collected, anyone else's memory) is never replaced; the map then goes where the kernel puts it, as before.

import { type Fd, type MapOptions, Mapping, native, PAGE_SIZE } from '../../sys/index.js';

const PAGE = BigInt(PAGE_SIZE);

/** Address space for run slots, looked for once (reserved and released: nothing is held). */
const REGION_BYTES = 64n << 30n;
/**
 * One slot's room. A run that outgrows it goes on into the next slot's space while that is free, and
 * otherwise starts again in a slot of its own.
 */
const SLOT_BYTES = 256n << 20n;
const SLOTS = Number(REGION_BYTES / SLOT_BYTES);
/** A new run starts in a slot only with this much room left in it; with less, from the slot's start again. */
const RUN_ROOM = 16 * 2 ** 20;
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
  /** The region's start; null before the first new run looked for it, or when none was found. */
  #base: bigint | null = null;
  #looked = false;
  /** Per slot: bytes from its start to the end of the last map placed in it (where its next run begins). */
  readonly #cursor = new Float64Array(SLOTS);
  /** Per slot: its maps not yet let go of. A new run takes a slot with none: never where another run grows. */
  readonly #live = new Uint32Array(SLOTS);
  /** The slot new runs go to while it has no live map: one lease after another, its maps after the last's. */
  #current = 0;
  readonly counts: PlacementCounts = { placed: 0, unplaced: 0 };

  /** Map [offset, offset+length) of `fd`, guarded (dma-mmap.ts), next to `around` when that space is free. */
  map(
    fd: Fd | number,
    opts: { offset: number; length: number; prot: 'r' | 'rw' },
    around: Neighbours,
  ): Mapping {
    // Object.assign, not a spread: on Node 20 (V8 11.3) a spread followed by a new property makes a new hidden class
    // nearly every DMA map (docs/performance-history.md, issue 16, twenty-fourth pass §4); the same below.
    const mapping = this.#place(fd, Object.assign({}, opts, { guard: true }), around);
    this.#track(mapping, 1);
    return mapping;
  }

  /** `mapping` (one map() returned) was let go of: its slot may take a new run again. */
  released(mapping: Mapping): void {
    this.#track(mapping, -1);
  }

  #place(
    fd: Fd | number,
    want: MapOptions & { length: number; prot: 'r' | 'rw' },
    around: Neighbours,
  ): Mapping {
    const length = BigInt(want.length);
    const nextTo: bigint[] = [];
    // Only where the two would be one run (same protection) and the place is page-aligned.
    const { before, after } = around;
    if (before && before.prot === want.prot) nextTo.push(before.address + BigInt(before.length));
    if (after && after.prot === want.prot && after.address > length) {
      const at = after.address - length;
      if (at !== nextTo[0]) nextTo.push(at); // a hole the map fits exactly: one place, tried once
    }
    for (const at of nextTo) {
      if (at % PAGE !== 0n) continue;
      const got = this.#mapAt(fd, want, at);
      if (got !== IN_USE) return got ?? this.#unplaced(fd, want);
    }
    // A new run: at the end of what the last run in a slot with no live map left there (the zero pages of its
    // unmapped maps, until collected), so a lease mapping and unmapping one buffer over and over stays in one
    // place. Twice at most: a slot found taken (someone else's mapping) is left as full.
    const base = length <= SLOT_BYTES ? this.#regionBase() : null;
    for (let i = 0; base !== null && i < 2; i++) {
      const slot = this.#freeSlot();
      if (slot < 0) break;
      // Nearly full: from its start, where the oldest runs' zero pages have most likely been collected (if not,
      // the place is refused and the slot left as full).
      if (this.#cursor[slot]! + Math.max(want.length, RUN_ROOM) > Number(SLOT_BYTES)) this.#cursor[slot] = 0;
      const at = base + BigInt(slot) * SLOT_BYTES + BigInt(this.#cursor[slot]!);
      const got = this.#mapAt(fd, want, at);
      if (got !== IN_USE) return got ?? this.#unplaced(fd, want);
      this.#cursor[slot] = Number(SLOT_BYTES);
      this.#current = (slot + 1) % SLOTS;
    }
    return this.#unplaced(fd, want);
  }

  /** The map at `at`; IN_USE when something is there; null when it failed otherwise (the plain map says why). */
  #mapAt(fd: Fd | number, want: MapOptions, at: bigint): Mapping | typeof IN_USE | null {
    try {
      const mapping = Mapping.map(fd, Object.assign({}, want, { at }));
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

  /** The current slot if it has no live map, else the next one that has none (-1: every slot has a run). */
  #freeSlot(): number {
    for (let i = 0; i < SLOTS; i++) {
      const slot = (this.#current + i) % SLOTS;
      if (this.#live[slot] === 0) {
        this.#current = slot;
        return slot;
      }
    }
    return -1;
  }

  /**
   * Every map in the region counts in each slot it covers, wherever it was placed from: a run grown past its
   * slot's end keeps a new run out of the next slot too, and moves that slot's cursor past itself.
   */
  #track(mapping: Mapping, delta: 1 | -1): void {
    if (this.#base === null) return;
    const start = mapping.address - this.#base;
    // The kernel maps whole pages: the next map can go no nearer than the page after this one's last.
    const end = start + ((BigInt(mapping.length) + PAGE - 1n) / PAGE) * PAGE;
    if (end <= 0n || start >= REGION_BYTES) return;
    const first = start < 0n ? 0 : Number(start / SLOT_BYTES);
    const last = Math.min(SLOTS - 1, Number((end - 1n) / SLOT_BYTES));
    for (let slot = first; slot <= last; slot++) {
      this.#live[slot] = Math.max(0, this.#live[slot]! + delta);
      if (delta > 0) {
        const reach = Number(end - BigInt(slot) * SLOT_BYTES);
        this.#cursor[slot] = Math.max(this.#cursor[slot]!, Math.min(reach, Number(SLOT_BYTES)));
      }
    }
  }

  #regionBase(): bigint | null {
    if (!this.#looked) {
      this.#looked = true;
      try {
        this.#base = native.findFreeRange(Number(REGION_BYTES));
      } catch (err) {
        // No such range (an address-space limit, ENOMEM): runs start where the kernel puts them. Asked once:
        // a limit stays, and a simulator under it should not pay a failing mmap per map.
        if ((err as { syscall?: string }).syscall !== 'mmap') throw err;
      }
    }
    return this.#base;
  }
}
