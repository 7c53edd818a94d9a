// A shared mapping of a descriptor, seen from JS as a SharedArrayBuffer.
//
// With guard: true the mapping survives the file being truncated under it
// (the owner revoking it): the faulting access reads zero instead of killing
// the process with SIGBUS, and isRevoked() turns true. Without a guard, such
// an access is fatal, as it is for any process.
//
// unmap() drops the file mapping at once (so the file's last reference and
// its inotify IN_CLOSE follow right away); the buffer itself stays readable
// (zeros) until garbage-collected, which is when the range is freed.
import { closedError, misuse } from '../errors.js';
import { type Fd, fdNumber } from './fd.js';
import { native } from './native.js';

const { PROT_READ, PROT_WRITE } = native.constants as Record<string, number>;

export interface MapOptions {
  /** Bytes to map (> 0). */
  length: number;
  /** File offset, a multiple of the page size (default 0). */
  offset?: number;
  /** 'rw' (default) or 'r'. Writing through a read-only mapping kills the process (SIGSEGV). */
  prot?: 'r' | 'rw';
  /** Survive truncation by the file's owner (see above). Default false. */
  guard?: boolean;
  /**
   * Map exactly at this page-aligned address, or fail with EEXIST when anything is mapped in the range
   * (MAP_FIXED_NOREPLACE: nothing is ever replaced). A kernel before 4.17 takes it as a hint and maps
   * elsewhere when it must (`address` says where). Default: where the kernel chooses.
   */
  at?: bigint;
}

export class Mapping {
  /** The mapped memory; also the mapping's handle for the addon (mappingUnmap, mappingRevoked). */
  readonly buffer: SharedArrayBuffer;
  readonly length: number;
  readonly prot: 'r' | 'rw';
  #address: bigint | null = null;
  #unmapped = false;
  #u8: Uint8Array | null = null;
  #u32: Uint32Array | null = null;

  static map(fd: Fd | number, opts: MapOptions): Mapping {
    const { length, offset = 0, prot = 'rw', guard = false, at } = opts;
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `length must be a positive integer, got ${length}`);
    }
    if (prot !== 'r' && prot !== 'rw') throw misuse('ERR_DEVLEASE_INVALID_ARG', `prot must be 'r' or 'rw'`);
    const protBits = prot === 'r' ? PROT_READ! : PROT_READ! | PROT_WRITE!;
    return new Mapping(native.mmap(fdNumber(fd), length, protBits, offset, guard, at), prot);
  }

  private constructor(buffer: SharedArrayBuffer, prot: 'r' | 'rw') {
    this.buffer = buffer;
    this.length = buffer.byteLength;
    this.prot = prot;
  }

  /** Address of the mapping in this process (where a neighbour goes, the guard's key, diagnostics). */
  get address(): bigint {
    this.#address ??= native.mappingAddress(this.buffer);
    return this.#address;
  }

  get closed(): boolean {
    return this.#unmapped;
  }

  /** A byte view of the mapping; throws ERR_DEVLEASE_CLOSED after unmap(). */
  get u8(): Uint8Array {
    if (this.#unmapped) throw closedError('mapping');
    this.#u8 ??= new Uint8Array(this.buffer);
    return this.#u8;
  }

  /** A 32-bit word view (for Atomics and futexes); throws ERR_DEVLEASE_CLOSED after unmap(). */
  get u32(): Uint32Array {
    if (this.#unmapped) throw closedError('mapping');
    this.#u32 ??= new Uint32Array(this.buffer, 0, Math.floor(this.length / 4));
    return this.#u32;
  }

  /** True once a guarded mapping was revoked (the file shrank under it and it now reads zero). */
  isRevoked(): boolean {
    return native.mappingRevoked(this.buffer);
  }

  /** Idempotent. */
  unmap(): void {
    if (this.#unmapped) return;
    native.mappingUnmap(this.buffer);
    this.#markUnmapped();
  }

  #markUnmapped(): void {
    this.#unmapped = true;
    this.#u8 = null;
    this.#u32 = null;
  }

  /**
   * unmap() of every mapping given, in as few mmap calls as their adjacent ranges allow: each call over mapped
   * memory flushes the TLB of every other CPU running this process, and the simulator places a lease's maps
   * next to each other for this (src/sim/host/dma-placement.ts: a reclaimed lease's 64 maps; issue 16).
   * Returns the mmap calls made; after a refused one, the mappings are each unmapped alone and the count is
   * their number (an upper bound: what the refused call had done is not counted again).
   */
  static unmapMany(mappings: readonly Mapping[]): number {
    const live = mappings.filter((m) => !m.#unmapped);
    if (live.length === 0) return 0;
    let calls: number;
    try {
      calls = native.mappingUnmapMany(live.map((m) => m.buffer));
    } catch {
      // A run's mmap failed (the rest were done): each one alone, so those done are marked and the failed
      // ones are tried once more; the first that still fails throws, after the others.
      let error: unknown = null;
      for (const m of live) {
        try {
          m.unmap();
        } catch (err) {
          error ??= err;
        }
      }
      if (error !== null) throw error;
      return live.length;
    }
    for (const m of live) m.#markUnmapped();
    return calls;
  }

  close(): void {
    this.unmap();
  }

  [Symbol.dispose](): void {
    this.unmap();
  }
}
