// Slice backing for the real simulator: every queue page and every
// device-memory granule is its own memfd, mapped (guarded) in the device
// worker. Slice fds handed out are re-opened descriptions of these memfds.
// The current memfd numbers are published in a shared table (sliceFdTable)
// so the front end can hand out slice fds without a worker round trip: it
// reads a number only while the worker cannot be renewing it (a renew is a
// revoke request the front end itself is waiting on).

import { type Fd, type Mapping, MemFd } from '../../sys/index.js';
import type { Sa1Options } from './options.js';
import type { Backing, SliceRef } from './slices.js';

interface Slice {
  memfd: MemFd;
  mapping: Mapping;
  ino: bigint;
}

function createSlice(name: string, size: number): Slice {
  const memfd = MemFd.create(name, { size });
  try {
    const mapping = memfd.map({ guard: true });
    return { memfd, mapping, ino: memfd.stat().ino };
  } catch (err) {
    memfd.close();
    throw err;
  }
}

/** Where queue pages and the spare page memory are published for the front end (host/page-revoke.ts). */
export interface PageSink {
  publishPage(q: number, address: bigint, ino: bigint): void;
  offerSpare(fd: number, ino?: bigint): void;
}

export class MemfdBacking implements Backing {
  readonly pages: Uint8Array[] = [];
  readonly granules: Uint8Array[] = [];
  readonly #slices: { queue: Slice[]; devmem: Slice[] } = { queue: [], devmem: [] };
  #generation = 0;
  /**
   * A queue page's next memory, offered to the front end (host/page-revoke.ts); null without a page table, and
   * after a revoke adopted it until the worker makes the next (makeSpare).
   */
  #spare: { memfd: MemFd; ino: bigint } | null = null;
  /** The last makeSpare() failed; cleared by the next revoke the worker serves whole (renew). */
  #spareFailed = false;

  /**
   * `fdTable`: where to publish each slice's memfd number (queue pages first, then granules; -1 once
   * closed), for the front end (sliceFdTable()).
   */
  constructor(
    private readonly o: Sa1Options,
    private readonly fdTable: Int32Array | null = null,
    private readonly pageTable: PageSink | null = null,
  ) {
    try {
      for (let q = 0; q < o.numQueues; q++) this.#install({ kind: 'queue', index: q });
      for (let g = 0; g < o.devmemSize / o.devmemGranule; g++) this.#install({ kind: 'devmem', index: g });
      this.makeSpare();
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** A new open description of the slice's memory, to hand out (caller owns it). */
  open(slice: SliceRef, readOnly: boolean): Fd {
    return this.#get(slice).memfd.reopen(readOnly ? 'r' : 'rw');
  }

  /** The slice whose current memory has this inode, if any. */
  findByInode(ino: bigint): SliceRef | null {
    for (const kind of ['queue', 'devmem'] as const) {
      const i = this.#slices[kind].findIndex((s) => s.ino === ino);
      if (i >= 0) return { kind, index: i };
    }
    return null;
  }

  /**
   * Switch to fresh memory, drop the device's own mapping and fd of the old memfd, and — with `fault` (the
   * default) — truncate it first, so every remaining mapping of it faults. Without `fault` the old memfd lives
   * on only in the mappings and fds others hold: theirs alone, reaching nothing of the device.
   */
  renew(slice: SliceRef, opts: { fault?: boolean } = {}): void {
    this.#spareFailed = false;
    const old = this.#get(slice);
    this.#install(slice);
    old.mapping.unmap();
    if (opts.fault ?? true) old.memfd.truncate(0);
    old.memfd.close();
  }

  /**
   * The front end mapped the spare over queue page q and published it (host/page-revoke.ts renewPage): take
   * ownership of it and close the old memfd (the front end truncated it). The next spare is not made here:
   * the worker makes it once the device is quiet (makeSpare), so the revoke and the commands behind it do
   * not wait for its memfd_create, open and ftruncate (issue 16, seventeenth pass).
   * Returns the old memory's inode (revoked from now on).
   */
  adoptSpare(q: number): bigint {
    const old = this.#get({ kind: 'queue', index: q });
    const spare = this.#spare;
    if (!spare) throw new Error('no spare page memory was offered');
    this.#spare = null;
    this.#slices.queue[q] = { memfd: spare.memfd, mapping: old.mapping, ino: spare.ino };
    if (this.fdTable)
      Atomics.store(this.fdTable, sliceFdIndex(this.o, { kind: 'queue', index: q }), spare.memfd.fd.fd);
    old.memfd.close();
    return old.ino;
  }

  /**
   * A spare is wanted: there is a page table to offer it in and this backing holds none (neither offered nor
   * taken by the front end and not yet adopted: so a new one is never offered over one the front end holds).
   * Not after a failed attempt (out of fds, say) until the next revoke: a quiet device would otherwise retry at
   * every look. Without a spare the front end hands a queue page's revoke to the worker whole, as for a detach.
   */
  get spareWanted(): boolean {
    return this.pageTable !== null && this.#spare === null && !this.#spareFailed;
  }

  /** Make the next spare page memory and offer it to the front end (see spareWanted). */
  makeSpare(): void {
    if (!this.pageTable) return;
    try {
      const memfd = MemFd.create(`sa1-queue-spare.${this.#generation++}`, { size: this.o.queueStride });
      try {
        this.#spare = { memfd, ino: memfd.stat().ino };
      } catch (err) {
        memfd.close();
        throw err;
      }
      this.pageTable.offerSpare(memfd.fd.fd, this.#spare.ino);
    } catch (err) {
      this.#spareFailed = true;
      throw err;
    }
  }

  /**
   * A hole punched in the page's memfd: it reads zero in every mapping (the client's too), and its pages are
   * freed untouched. Storing 64 KiB of zeros instead faulted in all 16 pages of a queue never used before,
   * the largest item of the simulator's CPU per lease at 1,000 leases (docs/performance-history.md, fifth pass).
   */
  zeroPage(q: number, from: number): void {
    this.#get({ kind: 'queue', index: q }).memfd.punchHole(from, this.o.queueStride - from);
  }

  close(): void {
    this.pageTable?.offerSpare(-1);
    this.#spare?.memfd.close();
    this.#spare = null;
    for (const kind of ['queue', 'devmem'] as const) {
      for (const s of this.#slices[kind]) {
        s.mapping.unmap();
        s.memfd.close();
      }
      this.fdTable?.fill(-1);
      this.#slices[kind] = [];
    }
  }

  #get(slice: SliceRef): Slice {
    const s = this.#slices[slice.kind][slice.index];
    if (!s) throw new RangeError(`no ${slice.kind} slice ${slice.index}`);
    return s;
  }

  #install(slice: SliceRef): void {
    const size = slice.kind === 'queue' ? this.o.queueStride : this.o.devmemGranule;
    const s = createSlice(`sa1-${slice.kind}-${slice.index}.${this.#generation++}`, size);
    this.#slices[slice.kind][slice.index] = s;
    if (this.fdTable) Atomics.store(this.fdTable, sliceFdIndex(this.o, slice), s.memfd.fd.fd);
    (slice.kind === 'queue' ? this.pages : this.granules)[slice.index] = s.mapping.u8;
    if (slice.kind === 'queue') this.pageTable?.publishPage(slice.index, s.mapping.address, s.ino);
  }
}

/** Shared memory for MemfdBacking's fd table: one word per queue page and granule. */
export function sliceFdTable(o: Sa1Options): Int32Array {
  const n = o.numQueues + o.devmemSize / o.devmemGranule;
  return new Int32Array(new SharedArrayBuffer(n * 4)).fill(-1);
}

/** The table word of a slice. */
export function sliceFdIndex(o: Sa1Options, slice: SliceRef): number {
  return slice.kind === 'queue' ? slice.index : o.numQueues + slice.index;
}
