// DMA memory a client brings: memfd-backed buffers, mapped into the client
// and, through the broker, into the device's IOMMU at an IOVA inside the
// lease's window chosen by a small first-fit allocator. The IOVAs are the
// lease's: with a translated view (LeaseInfo.iovaView) they are addresses of
// the client's own space, which the broker and the queue's Q_XLAT place in
// the device's; the client uses them as they are, in descriptors and rings.

import type { Mapping } from '../sys/mapping.js';
import { MemFd } from '../sys/memfd.js';
import type { VfioUserClient } from '../vfio/user/client.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../vfio/user/protocol.js';
import { minPageSize } from '../vfio/user/version.js';
import { leaseError } from './errors.js';

const PAGE = 4096n; // the smallest page; the lease's own comes from the broker's pgsizes

/** First-fit allocator over [base, base + size), page granular. */
export class IovaAllocator {
  readonly #free: { start: bigint; size: bigint }[];
  constructor(base: bigint, size: bigint) {
    this.#free = [{ start: base, size }];
  }
  alloc(size: bigint, align = PAGE): bigint | null {
    for (let i = 0; i < this.#free.length; i++) {
      const f = this.#free[i]!;
      const start = ((f.start + align - 1n) / align) * align;
      if (start + size > f.start + f.size) continue;
      const pieces = [];
      if (start > f.start) pieces.push({ start: f.start, size: start - f.start });
      if (start + size < f.start + f.size)
        pieces.push({ start: start + size, size: f.start + f.size - start - size });
      this.#free.splice(i, 1, ...pieces);
      return start;
    }
    return null;
  }
  free(start: bigint, size: bigint): void {
    this.#free.push({ start, size });
    this.#free.sort((a, b) => (a.start < b.start ? -1 : 1));
    for (let i = 0; i + 1 < this.#free.length; ) {
      const a = this.#free[i]!;
      const b = this.#free[i + 1]!;
      if (a.start + a.size === b.start) this.#free.splice(i, 2, { start: a.start, size: a.size + b.size });
      else i++;
    }
  }
}

/** A buffer the device can reach at `iova`, and the client at `u8`. */
export class DmaBuffer {
  readonly iova: bigint;
  readonly size: number;
  readonly #mapping: Mapping;
  readonly #memfd: MemFd;
  #release: ((buf: DmaBuffer) => Promise<void>) | null;

  constructor(
    iova: bigint,
    size: number,
    memfd: MemFd,
    mapping: Mapping,
    release: (buf: DmaBuffer) => Promise<void>,
  ) {
    this.iova = iova;
    this.size = size;
    this.#memfd = memfd;
    this.#mapping = mapping;
    this.#release = release;
  }
  get buffer(): SharedArrayBuffer {
    return this.#mapping.buffer;
  }
  get u8(): Uint8Array {
    return this.#mapping.u8;
  }
  get freed(): boolean {
    return this.#release === null;
  }
  /** Unmap from the device (through the broker) and from this process. Idempotent. */
  async free(): Promise<void> {
    const release = this.#release;
    if (!release) return;
    this.#release = null;
    try {
      await release(this);
    } finally {
      this.dropLocal();
    }
  }
  /** Local teardown only (the lease is gone, so the broker has already unmapped it). */
  dropLocal(): void {
    this.#release = null;
    this.#mapping.unmap();
    this.#memfd.close();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.free();
  }
}

export class DmaPool {
  readonly #client: VfioUserClient;
  readonly #iova: IovaAllocator;
  readonly #live = new Set<DmaBuffer>();
  /** The lease's name, for errors. */
  readonly #lease: string;
  /** Set by dropAll() when the lease closes: no allocation may start or finish after it. */
  #closed = false;
  /** The lease's DMA page (vfio-user pgsizes): sizes and IOVAs are multiples of it. */
  readonly page: number;

  constructor(client: VfioUserClient, window: { base: bigint; size: bigint }, lease = 'the lease') {
    this.#client = client;
    this.#lease = lease;
    this.#iova = new IovaAllocator(window.base, window.size);
    this.page = minPageSize(client.serverCapabilities?.pgsizes ?? Number(PAGE));
  }

  /** Allocate `size` bytes (rounded up to a page), mapped for device read and write. */
  async alloc(size: number, opts: { read?: boolean; write?: boolean } = {}): Promise<DmaBuffer> {
    this.#checkOpen();
    if (!Number.isSafeInteger(size) || size <= 0)
      throw leaseError('EINVAL', `dma.alloc: size must be a positive integer, got ${size}`);
    const bytes = BigInt(Math.ceil(size / this.page) * this.page);
    const iova = this.#iova.alloc(bytes, BigInt(this.page));
    if (iova === null)
      throw leaseError('ENOSPC', `dma.alloc: no ${bytes} free bytes left in the lease's IOVA window`);
    const memfd = MemFd.create('devlease-dma', { size: Number(bytes) });
    let mapping: Mapping | null = null;
    try {
      mapping = memfd.map({ length: Number(bytes) });
      const flags =
        (opts.read !== false ? VFIO_USER_F_DMA_REGION_READ : 0) |
        (opts.write !== false ? VFIO_USER_F_DMA_REGION_WRITE : 0);
      await this.#client.dmaMap({ fd: memfd.fd, offset: 0n, iova, size: bytes, flags });
      // The lease closed while the map was in flight: the buffer would outlive dropAll(). The broker drops
      // the device's map with the session.
      this.#checkOpen();
    } catch (err) {
      mapping?.unmap();
      memfd.close();
      this.#iova.free(iova, bytes);
      throw err;
    }
    const buf = new DmaBuffer(iova, Number(bytes), memfd, mapping, async (b) => {
      this.#live.delete(b);
      await this.#client.dmaUnmap({ iova: b.iova, size: BigInt(b.size) });
      // Only a range the device no longer maps goes back to the allocator.
      this.#iova.free(b.iova, BigInt(b.size));
    });
    this.#live.add(buf);
    return buf;
  }

  /** Everything still allocated, for close(). */
  dropAll(): void {
    this.#closed = true;
    for (const b of this.#live) b.dropLocal();
    this.#live.clear();
  }

  #checkOpen(): void {
    if (this.#closed) throw leaseError('ERR_DEVLEASE_CLOSED', `dma.alloc: lease ${this.#lease} is closed`);
  }
}
