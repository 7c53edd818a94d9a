// The IOMMU side of a kernel device: an iommufd IOAS (cdev path) or a type1
// container (group path). Both take DMA mappings of fd-backed memory and
// answer which IOVA ranges the IOMMU accepts; the device fd itself belongs
// to KernelDevice.

import type { DmaMapping, IovaRange, Transport } from '../device.js';
import type { UserMemory } from './sys.js';

export interface IommuDomain {
  readonly transport: Extract<Transport, 'kernel-iommufd' | 'kernel-container'>;
  /** IOVA ranges the IOMMU accepts for this device (inclusive `last`). */
  readonly ranges: IovaRange[];
  /** Facts worth showing in Device.path.reason (e.g. how memory gets mapped). */
  readonly notes: string[];
  map(m: DmaMapping): void;
  /** Unmap every mapping inside [iova, iova + size). */
  unmap(iova: bigint, size: bigint): void;
  /** Unmap everything and let go of the device; call before the device fd is closed. */
  release(): void;
  /** Free the IOMMU objects and close the fds this domain owns (after the device fd is closed). Idempotent. */
  close(): void;
}

interface Entry {
  size: bigint;
  /** The mmap whose pages the IOMMU pinned by address; kept until the IOVA is unmapped. */
  memory: UserMemory | null;
}

/** The live DMA mappings of one domain and the memory that must outlive them. */
export class DmaTable {
  readonly #entries = new Map<bigint, Entry>();

  add(iova: bigint, size: bigint, memory: UserMemory | null): void {
    this.#entries.set(iova, { size, memory });
  }

  /**
   * Map by virtual address: mmap the memory, let `pin` hand its address to the IOMMU (an ioctl that pins
   * the pages), and keep the mmap until the IOVA is unmapped; a failed `pin` unmaps it again.
   */
  addByAddress(m: DmaMapping, mmap: () => UserMemory, pin: (address: bigint) => void): void {
    const memory = mmap();
    try {
      pin(memory.address);
    } catch (err) {
      memory.unmap();
      throw err;
    }
    this.add(m.iova, m.size, memory);
  }

  /** Forget (and munmap the memory of) every mapping inside [iova, iova + size). */
  drop(iova: bigint, size: bigint): void {
    for (const [at, e] of this.#entries) {
      if (at >= iova && at + e.size <= iova + size) {
        e.memory?.unmap();
        this.#entries.delete(at);
      }
    }
  }

  /** Unmap every mapping with `unmap` (which drops it from the table); returns what failed. */
  unmapEach(unmap: (iova: bigint, size: bigint) => void): string[] {
    const problems: string[] = [];
    for (const { iova, size } of this.list()) {
      try {
        unmap(iova, size);
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    return problems;
  }

  list(): { iova: bigint; size: bigint }[] {
    return [...this.#entries].map(([iova, e]) => ({ iova, size: e.size }));
  }

  get size(): number {
    return this.#entries.size;
  }
}

export function checkMapping(m: DmaMapping): void {
  if (m.size <= 0n)
    throw Object.assign(new RangeError('DMA mapping size must be positive'), { code: 'EINVAL' });
  if (!m.read && !m.write) {
    throw Object.assign(new RangeError('DMA mapping must allow the device to read or write'), {
      code: 'EINVAL',
    });
  }
  if (m.size > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw Object.assign(new RangeError(`DMA mapping of 0x${m.size.toString(16)} bytes is too large`), {
      code: 'EINVAL',
    });
  }
}
