// The simulator's one I/O address space (datasheet §7): DMA_MAP adds a map
// (memory view + permissions), DMA_UNMAP removes whole maps, and every byte
// the device touches is translated here. IOVAs are plain numbers: the space
// is 48 bits, well inside a double's exact range.

import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';
import { IOMMU_PAGE_SIZE, IOVA_LIMIT } from './datasheet.js';
import type { Segments } from './memory.js';

/**
 * Owner memory that came without an fd (datasheet rev 2 §7): reached through the owner (DMA_READ/DMA_WRITE
 * messages), synchronously from the device's point of view. Each returns -1, or the first IOVA it could not
 * reach.
 */
export interface RemoteMemory {
  read(iova: number, into: Uint8Array): number;
  write(iova: number, data: Uint8Array): number;
}

export interface DmaMapping {
  readonly iova: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** The mapped memory, `size` bytes. */
  readonly view: Uint8Array;
  /**
   * True once the memory behind the map shrank under it (its guarded mapping was revoked and now reads
   * zero). Absent: the memory cannot shrink.
   */
  revoked?(): boolean;
  /** Called exactly once when the map leaves the table: the owner of the memory unmaps it. */
  release(): void;
  /**
   * Set for a map without an fd: its memory is the owner's, reached through messages (`view` is empty). A
   * translation reads a read's bytes into a buffer of its own, and a write's buffer goes to the owner at
   * flush(), after the access.
   */
  readonly remote?: RemoteMemory;
}

/** A write through a map without an fd, waiting for flush(). */
interface RemoteWrite {
  remote: RemoteMemory;
  iova: number;
  data: Uint8Array;
}

export interface MapRequest {
  iova: bigint;
  size: bigint;
  /** Offset into the fd; checked for page alignment here, used by whoever maps the memory. */
  offset: bigint;
}

/** Refuse a map the datasheet refuses (alignment, 48-bit limit); returns the numbers. */
export function checkMapRequest(req: MapRequest): { iova: number; size: number; offset: number } {
  const page = BigInt(IOMMU_PAGE_SIZE);
  if (req.size <= 0n) throw new VfioError('EINVAL', 'DMA map of size 0');
  if (req.iova % page !== 0n || req.size % page !== 0n || req.offset % page !== 0n) {
    throw new VfioError(
      'EINVAL',
      `DMA map not aligned to the ${IOMMU_PAGE_SIZE}-byte page (iova 0x${req.iova.toString(16)}, ` +
        `size 0x${req.size.toString(16)}, offset 0x${req.offset.toString(16)})`,
    );
  }
  if (req.iova + req.size > BigInt(IOVA_LIMIT)) {
    throw new VfioError(
      'EINVAL',
      `DMA map reaches past the 48-bit IOVA space (iova 0x${req.iova.toString(16)})`,
    );
  }
  if (req.offset >= 2n ** 53n) throw new VfioError('EINVAL', 'DMA map offset too large');
  return { iova: Number(req.iova), size: Number(req.size), offset: Number(req.offset) };
}

export class Iommu {
  /** Sorted by iova, non-overlapping. */
  #maps: DmaMapping[] = [];
  /**
   * Maps whose backing shrank (rev 2 §7): every access through them completes as IOMMU_FAULT until they are
   * unmapped. The guard replaced the whole mapping with zero pages when the first access found the backing
   * gone, so none of its bytes can be trusted any more.
   */
  readonly #dead = new Set<DmaMapping>();
  /** The process's guard revocation count (its low word, read in place: a load instead of a native call). */
  readonly #revocationWord = native.guardRevocationsWord();
  /** That count when the maps were last checked. */
  #revocations = Atomics.load(this.#revocationWord, 0);
  /**
   * Called when a translation finds no map (or no permission): the simulator's worker applies map updates
   * its front end already answered (posted one way) and returns true if it applied any; the translation is
   * then tried once more. A map answered before a descriptor was submitted is always found.
   */
  onMiss: (() => boolean) | null = null;
  /**
   * Bumped by every change a translation could see (a map added or removed, a revocation noticed): a
   * translation cached with the generation it was made in is still the table's answer while it holds.
   */
  #generation = 0;
  /** Writes through maps without an fd since the last flush(). */
  #remoteWrites: RemoteWrite[] = [];

  get generation(): number {
    return this.#generation;
  }

  get maps(): readonly DmaMapping[] {
    return this.#maps;
  }

  /** Throws EEXIST when [iova, iova+size) overlaps an existing map. */
  checkFree(iova: number, size: number): void {
    const i = this.#firstEndingAfter(iova);
    const m = this.#maps[i];
    if (m && m.iova < iova + size) {
      throw new VfioError(
        'EEXIST',
        `DMA map [0x${iova.toString(16)}, +0x${size.toString(16)}) overlaps the map at 0x${m.iova.toString(16)}`,
      );
    }
  }

  /** The maps next to a free [iova, iova+size): the one ending at `iova` and the one starting at its end. */
  neighbours(iova: number, size: number): { before: DmaMapping | null; after: DmaMapping | null } {
    const i = this.#firstEndingAfter(iova);
    const prev = this.#maps[i - 1];
    const next = this.#maps[i];
    return {
      before: prev && prev.iova + prev.size === iova ? prev : null,
      after: next && next.iova === iova + size ? next : null,
    };
  }

  add(m: DmaMapping): void {
    this.checkFree(m.iova, m.size);
    this.#generation++;
    this.#maps.splice(this.#firstEndingAfter(m.iova), 0, m);
  }

  /**
   * Remove the maps making up [iova, iova+size) (all maps when `all`). The
   * range must cover whole maps: cutting one is EINVAL, covering none ENOENT.
   * Returns the removed maps; the caller releases them once the device holds
   * no reference.
   */
  remove(iova: number, size: number, all = false): DmaMapping[] {
    this.#generation++;
    if (all) {
      const out = this.#maps;
      this.#maps = [];
      this.#dead.clear();
      return out;
    }
    const end = iova + size;
    const first = this.#firstEndingAfter(iova);
    let last = first;
    while (last < this.#maps.length && (this.#maps[last] as DmaMapping).iova < end) {
      const m = this.#maps[last] as DmaMapping;
      if (m.iova < iova || m.iova + m.size > end) {
        throw new VfioError(
          'EINVAL',
          `DMA unmap [0x${iova.toString(16)}, +0x${size.toString(16)}) cuts the map ` +
            `[0x${m.iova.toString(16)}, +0x${m.size.toString(16)})`,
        );
      }
      last++;
    }
    if (last === first) {
      throw new VfioError('ENOENT', `no DMA map in [0x${iova.toString(16)}, +0x${size.toString(16)})`);
    }
    const out = this.#maps.splice(first, last - first);
    for (const m of out) this.#dead.delete(m);
    return out;
  }

  /**
   * Notice maps whose backing shrank since the last call: one load when nothing changed (the process-wide
   * revocation count, read in the native counter's own memory). Returns true when some guarded mapping was revoked since; the engine
   * calls it before and after each access, and on true asks deadIn() about the ranges it touched.
   */
  sync(): boolean {
    // The low word changes with every revocation (2^32 of them between two looks would be needed to miss one).
    const n = Atomics.load(this.#revocationWord, 0);
    if (n === this.#revocations) return false;
    this.#revocations = n;
    this.#generation++;
    for (const m of this.#maps) if (m.revoked?.()) this.#dead.add(m);
    return true;
  }

  /** The first IOVA of [iova, iova+length) in a map whose backing shrank, or -1. */
  deadIn(iova: number, length: number): number {
    if (this.#dead.size === 0) return -1;
    const end = iova + length;
    for (let i = this.#firstEndingAfter(iova); i < this.#maps.length; i++) {
      const m = this.#maps[i] as DmaMapping;
      if (m.iova >= end) break;
      if (this.#dead.has(m)) return Math.max(m.iova, iova);
    }
    return -1;
  }

  /**
   * Translate [iova, iova+length) for a read or a write into `out`. Returns
   * -1 on success, else the first IOVA that is unmapped or mapped without the
   * needed permission (`out` is then partial and must be discarded).
   */
  translate(iova: number, length: number, write: boolean, out: Segments, local = false): number {
    const base = out.length;
    const writes = this.#remoteWrites.length;
    let fault = this.#translate(iova, length, write, out, local);
    if (fault >= 0 && this.onMiss?.()) {
      out.length = base;
      this.#remoteWrites.length = writes;
      fault = this.#translate(iova, length, write, out, local);
    }
    // A failed translation leaves nothing to write back: its buffers are never filled.
    if (fault >= 0) this.#remoteWrites.length = writes;
    return fault;
  }

  /**
   * `local`: a map without an fd counts as a miss (the engine's ring cache wants memory it can keep). Through
   * such a map a read's bytes are fetched from the owner now, into a buffer of their own; a write's buffer is
   * sent at the next flush().
   */
  #translate(iova: number, length: number, write: boolean, out: Segments, local: boolean): number {
    let at = iova;
    const end = iova + length;
    let i = this.#firstEndingAfter(at);
    while (at < end) {
      const m = this.#maps[i];
      if (!m || m.iova > at || (write ? !m.writable : !m.readable)) return at;
      if (this.#dead.size !== 0 && this.#dead.has(m)) return at;
      const within = at - m.iova;
      const n = Math.min(end - at, m.size - within);
      if (m.remote) {
        if (local) return at;
        const data = new Uint8Array(n);
        if (write) this.#remoteWrites.push({ remote: m.remote, iova: at, data });
        else {
          const failed = m.remote.read(at, data);
          if (failed >= 0) return failed;
        }
        out.push(data);
      } else {
        out.push(m.view.subarray(within, within + n));
      }
      at += n;
      i++;
    }
    return -1;
  }

  /**
   * Send the writes made through maps without an fd since the last call, in order. Returns -1, or the first
   * IOVA the owner did not take (the rest are dropped: the access failed there). One comparison when there
   * are none.
   */
  flush(): number {
    if (this.#remoteWrites.length === 0) return -1;
    const writes = this.#remoteWrites;
    this.#remoteWrites = [];
    for (const w of writes) {
      const failed = w.remote.write(w.iova, w.data);
      if (failed >= 0) return failed;
    }
    return -1;
  }

  /** Forget the writes not yet flushed (an access that failed before it wrote anything). */
  dropWrites(): void {
    this.#remoteWrites.length = 0;
  }

  /**
   * The one map holding all of [iova, iova+length) with the access needed and a live backing, or null (not
   * mapped, split across maps, no permission, dead, a map without an fd, or a map update still waiting: the caller takes
   * translate(), which applies those and names the fault). Valid while `generation` stays as it was.
   */
  find(iova: number, length: number, write: boolean): DmaMapping | null {
    const m = this.#maps[this.#firstEndingAfter(iova)];
    if (
      !m ||
      m.remote ||
      m.iova > iova ||
      iova + length > m.iova + m.size ||
      (write ? !m.writable : !m.readable)
    ) {
      return null;
    }
    return this.#dead.size !== 0 && this.#dead.has(m) ? null : m;
  }

  /** Index of the first map whose end lies above `iova` (binary search). */
  #firstEndingAfter(iova: number): number {
    let lo = 0;
    let hi = this.#maps.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = this.#maps[mid] as DmaMapping;
      if (m.iova + m.size <= iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
