// The IOMMU side of a kernel device: an iommufd IOAS (cdev path) or a type1
// container (group path). Both take DMA mappings of fd-backed memory and
// answer which IOVA ranges the IOMMU accepts; the device fd itself belongs
// to KernelDevice.

import { DevleaseError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import type { DmaMapping, IovaRange, Transport } from '../device.js';
import { codedError, type KernelSys, type UserMemory } from './sys.js';

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
  /**
   * Close this process's fds and nothing else: the IOAS or container, its maps and the attachment stay as they
   * are, for another broker process holding the same objects (an upgrade not yet committed). Idempotent.
   */
  abandon(): void;
  /** The fds and facts another broker process needs to carry this domain on (src/device/kernel/handover.ts). */
  handover(add: (fd: Fd) => number): DomainHandover;
  /**
   * This process now carries the domain alone (an upgrade's commit): move what the kernel can of the pinned-page
   * accounting here, and say what happened to it.
   */
  takeAccounting(): string;
}

/** One live DMA map as handed over: by file (the IOAS holds the file) or by address (pinned in the old mm). */
export interface HandedMap {
  iova: bigint;
  size: bigint;
  byAddress: boolean;
}

export type DomainHandover =
  | {
      kind: 'iommufd';
      iommufd: number;
      iommufdName: string;
      devId: number;
      ioasId: number;
      mapFile: boolean;
      ranges: IovaRange[];
      maps: HandedMap[];
    }
  | {
      kind: 'container';
      group: number;
      container: number;
      containerName: string;
      ranges: IovaRange[];
      notes: string[];
      maps: HandedMap[];
    };

interface Entry {
  size: bigint;
  /** The mmap whose pages the IOMMU pinned by address; kept until the IOVA is unmapped. */
  memory: UserMemory | null;
  /** Pinned by address (an adopted map has no mmap here: the old broker's went with it, the pins stay). */
  byAddress: boolean;
}

/** The live DMA mappings of one domain and the memory that must outlive them. */
export class DmaTable {
  readonly #entries = new Map<bigint, Entry>();

  add(iova: bigint, size: bigint, memory: UserMemory | null, byAddress = memory !== null): void {
    this.#entries.set(iova, { size, memory, byAddress });
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

  /**
   * After an unmap of [iova, iova + size) the kernel said took `unmapped` bytes: forget (and munmap the memory
   * of) every mapping there. Throws EIO, keeping the table, when that is less than the mappings there (type1
   * answers success with less for mappings it skips: before Linux 6.0, those another process's mm made, as after
   * an upgrade), so no lease's memory is taken for unmapped while the IOMMU still reaches it.
   */
  dropUnmapped(what: string, iova: bigint, size: bigint, unmapped: bigint): void {
    const within = [...this.#entries].filter(([at, e]) => at >= iova && at + e.size <= iova + size);
    const want = within.reduce((n, [, e]) => n + e.size, 0n);
    if (unmapped < want) {
      throw new DevleaseError(
        'EIO',
        `${what}: the kernel unmapped 0x${unmapped.toString(16)} of the 0x${want.toString(16)} bytes mapped there`,
      );
    }
    for (const [at, e] of within) {
      e.memory?.unmap();
      this.#entries.delete(at);
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

  list(): HandedMap[] {
    return [...this.#entries].map(([iova, e]) => ({ iova, size: e.size, byAddress: e.byAddress }));
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

/**
 * Every handed map must still be mapped: a one-page map of scratch memory at its IOVA (`tryMap`) must be
 * refused EEXIST. One that goes through means the map was not there: it is undone, and the adoption refused.
 * (Neither iommufd nor type1 lists its maps; IOMMU_IOAS_IOVA_RANGES says what may be mapped, not what is.)
 */
export function checkMapped(
  sys: KernelSys,
  maps: HandedMap[],
  what: string,
  tryMap: (iova: bigint, va: bigint) => void,
  undo: (iova: bigint) => void,
): void {
  if (!maps.length) return;
  const page = sys.scratch(4096);
  const missing: string[] = [];
  try {
    for (const m of maps) {
      try {
        tryMap(m.iova, page.address);
      } catch (err) {
        if ((err as { code?: string }).code === 'EEXIST') continue;
        throw err;
      }
      undo(m.iova);
      missing.push(`0x${m.iova.toString(16)}`);
    }
  } finally {
    page.unmap();
  }
  if (missing.length)
    throw codedError('ENODEV', `${what}: the maps at ${missing.join(', ')} are not there any more`);
}

/** The IOVA ranges read now must be the ones the previous broker laid leases out in. */
export function checkRanges(
  what: string,
  was: { start: bigint; last: bigint }[],
  now: { start: bigint; last: bigint }[],
): void {
  const s = (rs: { start: bigint; last: bigint }[]) =>
    rs.map((r) => `[0x${r.start.toString(16)}, 0x${r.last.toString(16)}]`).join(', ');
  if (s(was) !== s(now)) throw codedError('ENODEV', `${what}: IOVA ranges ${s(now)}, were ${s(was)}`);
}
