// The page-slice driver: leases page-sized slices of one BAR of plain memory,
// one page per lease (kind `page`). Made for QEMU's `ivshmem-plain`
// (1af4:1110), whose BAR2 is shared memory backed by a host file, and usable
// for any device whose BAR is memory with no side effects (config
// `device.driver` can point a module of one's own at this class).
//
// Isolation of a page follows what the transport can do:
//   - slice fds (vfio-user with DMA_BUF): `enforced`, the device revokes them;
//   - the kernel's device fd handed out once (directSlices):
//     `audited`, mapped directly and checked by the broker (src/broker/audit-scan);
//   - neither: `cooperative`, reached through the broker (REGION_READ/WRITE).
// No interrupts, no DMA window: ivshmem-plain has neither.

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { VFIO_REGION_INFO_FLAG_MMAP } from '../vfio/uapi/vfio.js';
import { type BarType, barTypeAt, leaseConfigSpaceOf, readBarTypes } from './config-space.js';
import type {
  Driver,
  DriverConfig,
  DriverFactory,
  Isolation,
  LeaseRequest,
  LeaseResources,
  SliceSpec,
} from './driver.js';

export const IVSHMEM_VENDOR = 0x1af4;
export const IVSHMEM_DEVICE = 0x1110;
/** ivshmem's shared-memory BAR. */
export const IVSHMEM_BAR = 2;

export function pageIsolation(dev: Device): { level: Isolation; mappable: boolean } {
  if (dev.capabilities.mappableSlices) {
    return {
      mappable: true,
      level: {
        level: 'enforced',
        reason: 'the page is a slice fd of its own, revoked by the device at reclaim',
      },
    };
  }
  if (dev.directSlices && dev.directFd) {
    return {
      mappable: true,
      level: {
        level: 'audited',
        reason:
          'mapped directly from the VFIO device fd, handed over once and closed before connect() returned; the ' +
          'broker checks from /proc that no process keeps or passes the fd and that every mapping lies in its ' +
          'lease; the kernel does not prevent misuse (its dma-buf of a BAR has no mmap and no revoke): while a ' +
          'holder has the fd it can do all the fd allows (every region, config space, reset, a dma-buf export), ' +
          'unseen by the audit, so the holder is trusted not to be hostile. At a ' +
          "revoke's deadline every process still mapping the page is killed: the strongest revoke a stock kernel allows",
      },
    };
  }
  return {
    mappable: false,
    level: { level: 'cooperative', reason: 'the page is reached through the broker (REGION_READ/WRITE)' },
  };
}

export class PageSliceDriver extends EventEmitter implements Driver {
  readonly name: string = 'page-slices';
  #barSize = 0n;
  #barType: BarType | null = null;
  #free: bigint[] = [];
  #pages = 0;

  constructor(
    protected readonly dev: Device,
    protected readonly cfg: DriverConfig,
    readonly bar = IVSHMEM_BAR,
  ) {
    super();
  }

  get #page(): bigint {
    return BigInt(this.cfg.layout.pageSize);
  }

  kinds(): string[] {
    return ['page'];
  }

  capacity(): number {
    return this.#pages;
  }

  async boot(): Promise<void> {
    const r = await this.dev.region(this.bar);
    if (r.size === 0n) throw new VfioError('ENODEV', `BAR${this.bar} of the device is absent (size 0)`);
    this.#barSize = r.size;
    this.#barType = barTypeAt(await readBarTypes(this.dev), this.bar);
    const mmap = (r.flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0;
    if (this.dev.directSlices && !mmap)
      throw new VfioError('EINVAL', `BAR${this.bar} cannot be mmapped: no page of it can be mapped directly`);
    this.validateLayout();
    this.#pages = Number(this.#barSize / this.#page);
    this.#free = Array.from({ length: this.#pages }, (_, i) => BigInt(i) * this.#page);
  }

  validateLayout(): void {
    if (this.#barSize % this.#page !== 0n) {
      throw new VfioError(
        'EINVAL',
        `BAR${this.bar}: size 0x${this.#barSize.toString(16)} is not a multiple of the ${this.#page}-byte page ` +
          '(offset 0, stride one page): its last slice would share a page with nothing leased',
      );
    }
  }

  acquire(req: LeaseRequest): LeaseResources {
    if (req.kind !== 'page')
      throw new VfioError('EINVAL', `the ${this.name} driver offers lease kind 'page', not '${req.kind}'`);
    const offset = this.#free.shift();
    if (offset === undefined)
      throw new VfioError('ENOSPC', `all ${this.#pages} pages of BAR${this.bar} are leased`);
    const iso = pageIsolation(this.dev);
    const slice: SliceSpec = {
      region: this.bar,
      offset,
      size: this.#page,
      leaseRegion: this.bar,
      leaseOffset: 0n,
      unit: this.#page,
      mappable: iso.mappable,
      isolation: iso.level,
    };
    return {
      kind: 'page',
      queue: Number(offset / this.#page),
      slices: [slice],
      window: null,
      view: null,
      vectors: [],
      devmem: null,
      isolation: { [`bar${this.bar}`]: iso.level },
    };
  }

  async activate(): Promise<void> {}
  async quiesce(): Promise<void> {}
  /** Plain memory: a reset of the lease is its page cleared. */
  async resetLease(res: LeaseResources): Promise<void> {
    await this.scrub(res);
  }
  async recover(): Promise<void> {}

  /** Zero the page through the device (pwrite on the kernel's device fd), so the next holder sees nothing. */
  async scrub(res: LeaseResources): Promise<void> {
    const zero = new Uint8Array(4096);
    for (const s of res.slices)
      for (let o = 0n; o < s.size; o += 4096n) await this.dev.write(s.region, s.offset + o, zero);
  }

  release(res: LeaseResources): void {
    for (const s of res.slices) if (!this.#free.includes(s.offset)) this.#free.push(s.offset);
    this.#free.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }

  deviceLost(): void {
    this.#free = [];
    this.#pages = 0;
  }

  leaseConfigSpace(): Uint8Array {
    const ids = this.dev.ids;
    return leaseConfigSpaceOf(ids, this.#barType ? { [this.bar]: this.#barType } : {});
  }

  async status(): Promise<Record<string, unknown>> {
    return {
      driver: this.name,
      bar: this.bar,
      barSize: this.#barSize.toString(),
      pages: this.#pages,
      free: this.#free.length,
    };
  }

  close(): void {}

  // ---- broker upgrade (src/broker/handover): see Driver.hold/handover/adopt ----
  // No timer or watcher of its own: hold/unhold have nothing to stop. The pages leased are the leases' own
  // resources (given to adopt()); the state is the BAR's size, checked against a fresh read, and the page size.

  async hold(): Promise<void> {}

  unhold(): void {}

  handover(): { state: { barSize: string; pageSize: string }; fds: Fd[] } {
    return { state: { barSize: this.#barSize.toString(), pageSize: this.#page.toString() }, fds: [] };
  }

  /** The BAR read again (boot() changes nothing in the device); every page not leased, nor parked, is free. */
  async adopt(
    state: unknown,
    _fds: Fd[],
    leased: LeaseResources[],
    parked: LeaseResources[] = [],
  ): Promise<void> {
    const s = state as { barSize?: unknown; pageSize?: unknown };
    if (typeof s?.barSize !== 'string')
      throw new Error(`${this.name}: the handed-over state has no BAR size`);
    // The config may change at an upgrade; the pages leased are cut in the old size.
    if (s.pageSize !== this.#page.toString())
      throw new Error(
        `${this.name}: [layout] page_size is ${this.#page}, the old broker leased pages of ${String(s.pageSize)}`,
      );
    await this.boot();
    if (this.#barSize.toString() !== s.barSize)
      throw new Error(
        `${this.name}: BAR${this.bar} is ${this.#barSize} bytes, the old broker had ${s.barSize}`,
      );
    const taken = new Set([...leased, ...parked].flatMap((r) => r.slices.map((sl) => sl.offset)));
    this.#free = this.#free.filter((o) => !taken.has(o));
  }
}

export const pageSliceDriverFactory: DriverFactory = {
  name: 'page-slices',
  matches: (d) => d.ids.vendor === IVSHMEM_VENDOR && d.ids.device === IVSHMEM_DEVICE,
  create: (device, config) => new PageSliceDriver(device, config),
};
