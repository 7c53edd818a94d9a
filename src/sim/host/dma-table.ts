// DMA_MAP and DMA_UNMAP served by the simulator's front end (issue 16): the
// front end keeps its own copy of the IOMMU table's ranges, refuses what
// the device would refuse (alignment and the 48-bit limit, overlap, an fd
// that is no memory or is too short: the same checks and messages as the
// device's), answers, and posts the change to the device worker one way
// (mailbox.ts). The worker applies posts in order, before its next access
// to mapped memory, so a descriptor submitted after the reply sees the map.
//
// The front end maps the memory itself and posts the mapping's shared
// buffer: the worker's view is over the same pages. An unmap must not race
// a descriptor using the mapping: by the time it is answered the device
// holds no reference to the memory (§7). The front end waits only while
// the engine is inside a round (the epoch the worker publishes) and has not
// yet taken the post, then drops the file mapping itself (the pages under
// any view left become zero pages, mapping.ts); an idle device costs no
// wait at all.

import { type Fd, Mapping } from '../../sys/index.js';
import { checkDmaFd } from '../../vfio/user/dma-fd-check.js';
import { checkMapRequest, type DmaMapping, Iommu } from '../model/iommu.js';
import type { DeviceRequest } from './commands.js';
import { tooManyMaps } from './dma-limit.js';
import { mapDmaFd } from './dma-mmap.js';
import { DmaPlacement } from './dma-placement.js';
import type { MailboxCaller } from './mailbox.js';

const NO_MEMORY = new Uint8Array(0);
const nothing = (): void => {};

/**
 * A map in the front end's table: the device's view of it, and the front end's own mapping of its memory (null
 * for a map without an fd: the owner's memory, reached through DMA_READ/DMA_WRITE, remote-dma.ts).
 */
interface FrontEntry extends DmaMapping {
  readonly mapping: Mapping | null;
}

/** The front end's entry: the device's view is its own (posted); the maps an unmap removes are released together. */
const entry = (
  iova: number,
  size: number,
  m: { read: boolean; write: boolean },
  mapping: Mapping | null,
): FrontEntry => ({
  iova,
  size,
  readable: m.read,
  writable: m.write,
  view: NO_MEMORY,
  release: nothing,
  mapping,
});

export interface MapFields {
  offset: bigint;
  iova: bigint;
  size: bigint;
  read: boolean;
  write: boolean;
}

export class FrontDmaTable {
  /** Ranges and permissions, and the front end's mapping of each map's memory (FrontEntry). */
  readonly #table = new Iommu();
  /** Where the maps go: a lease's next to each other, so its window's unmap is one mmap call. */
  readonly placement = new DmaPlacement();
  #unmapCalls = 0;
  /** Maps without an fd in the table. */
  #remoteMaps = 0;
  /** The post of the last unmap that took maps without an fd (the device may use them until it takes it). */
  #remoteUnmapPost: number | null = null;
  /** Told of every unmap posted (its post number and range): remote-dma.ts refuses stale accesses with it. */
  onUnmapPosted: ((post: number, iova: number, size: number, all: boolean) => void) | null = null;

  constructor(
    private readonly mailbox: MailboxCaller<DeviceRequest>,
    private readonly timeoutMs: number,
    /** The max_dma_maps the simulator advertised (dma-limit.ts): a map past it is refused ENOSPC. */
    readonly maxMaps: number,
  ) {}

  /** mmap calls taken to drop the maps let go of (Mapping.unmapMany): one per run of adjacent maps. */
  get unmapCalls(): number {
    return this.#unmapCalls;
  }

  /** Maps without an fd in the table. */
  get remoteMaps(): number {
    return this.#remoteMaps;
  }

  /**
   * Whether the device may be using memory without an fd, and so may wait on this thread for the owner
   * (remote-dma.ts): such maps in the table, or taken away by an unmap the device has not taken yet.
   */
  get remoteInUse(): boolean {
    if (this.#remoteMaps > 0) return true;
    if (this.#remoteUnmapPost === null) return false;
    if (((this.mailbox.taken() - this.#remoteUnmapPost) | 0) < 0) return true;
    this.#remoteUnmapPost = null;
    return false;
  }

  /** Maps in the table (the device's count, once it took every post). */
  get size(): number {
    return this.#table.maps.length;
  }

  /** Map [offset, offset+size) of `fd` at iova (the caller keeps and closes the fd). */
  map(fd: Fd, m: MapFields): void {
    const { iova, size, offset } = checkMapRequest(m);
    this.#table.checkFree(iova, size);
    // After the overlap check, as VFIO's type1 IOMMU orders EEXIST before ENOSPC; before anything is mapped.
    if (this.#table.maps.length >= this.maxMaps) throw tooManyMaps(this.maxMaps);
    // Datasheet rev 2 §7: the fd must be memory covering [offset, offset + size) now.
    checkDmaFd(fd.fd, m);
    this.mailbox.makeRoom(); // a full ring fails the map here, before anything is mapped or taken
    const near = this.#table.neighbours(iova, size);
    const around = {
      before: (near.before as FrontEntry | null)?.mapping ?? null,
      after: (near.after as FrontEntry | null)?.mapping ?? null,
    };
    const mapping = mapDmaFd(fd.fd, { offset, size, write: m.write }, this.placement, around);
    this.#table.add(entry(iova, size, m, mapping));
    const { read, write } = m;
    this.mailbox.post(
      {
        op: 'mapPosted',
        buffer: mapping.buffer,
        address: mapping.address,
        iova,
        size,
        read,
        write,
      },
      false,
    );
  }

  /**
   * Map [iova, iova+size) of owner memory that came without an fd (datasheet rev 2 §7): the same checks as
   * map() but the fd's; the device reaches it through the owner (remote-dma.ts).
   */
  mapRemote(m: Omit<MapFields, 'offset'>): void {
    const { iova, size } = checkMapRequest({ ...m, offset: 0n });
    this.#table.checkFree(iova, size);
    if (this.#table.maps.length >= this.maxMaps) throw tooManyMaps(this.maxMaps);
    this.mailbox.makeRoom();
    this.#table.add(entry(iova, size, m, null));
    this.#remoteMaps++;
    this.mailbox.post({ op: 'remoteMapPosted', iova, size, read: m.read, write: m.write }, false);
  }

  /** Unmap whole maps in [iova, iova+size) (all: every map); EINVAL for a cut map, ENOENT for none. */
  unmap(iova: bigint, size: bigint, all: boolean): void {
    const { removed, n } = this.#unpost(iova, size, all);
    try {
      this.mailbox.quiesce(n, this.timeoutMs);
    } finally {
      // Past the deadline too: a device stuck in a round must not keep the owner's memory.
      this.#release(removed);
    }
  }

  /**
   * unmap() while the device may use memory without an fd, waiting for it without blocking this thread. The
   * device holds no reference to memory without an fd (each access asks the front end, which refuses one
   * into an unmapped range from now on: remote-dma.ts), so an unmap of only such maps is answered at once.
   * One that takes memory the device maps waits until the device cannot be using it, the wait wrapped by
   * `wrap` (accesses to the owner fail meanwhile: QEMU serves none while it waits for this reply).
   */
  async unmapAsync(
    iova: bigint,
    size: bigint,
    all: boolean,
    wrap: (wait: (posted: (post: number) => void) => Promise<void>) => Promise<void>,
  ): Promise<void> {
    const { removed, n } = this.#unpost(iova, size, all);
    try {
      if ((removed as FrontEntry[]).some((m) => m.mapping !== null)) {
        await wrap((posted) => {
          posted(n);
          return this.mailbox.quiesceAsync(n, this.timeoutMs);
        });
      }
    } finally {
      this.#release(removed);
    }
  }

  /** Whether [iova, iova+length) lies in maps with the access needed (the device's access is refused if not). */
  covers(iova: number, length: number, write: boolean): boolean {
    return this.#table.translate(iova, length, write, []) < 0;
  }

  #unpost(iova: bigint, size: bigint, all: boolean): { removed: DmaMapping[]; n: number } {
    this.mailbox.makeRoom(); // a full ring fails the unmap here, with the table and the device unchanged
    const removed = this.#table.remove(Number(iova), Number(size), all);
    let remote = false;
    for (const m of removed as FrontEntry[]) {
      if (m.mapping === null) {
        this.#remoteMaps--;
        remote = true;
      }
    }
    const n = this.mailbox.post({ op: 'unmapPosted', iova, size, all }, false);
    if (remote) {
      this.#remoteUnmapPost = n;
      this.onUnmapPosted?.(n, Number(iova), Number(size), all);
    }
    return { removed, n };
  }

  /** The owner left, or the device stopped: it dropped every map; the memory is let go of here. */
  releaseAll(): void {
    this.#remoteMaps = 0;
    this.#remoteUnmapPost = null;
    this.#release(this.#table.remove(0, 0, true));
  }

  /**
   * Drops the file mappings of `removed` in as few mmap calls as their adjacent ranges allow (Mapping.unmapMany):
   * each is a TLB flush by interrupt on the other CPU when the device thread runs there, and a reclaim's
   * unmap removes a lease's maps at once, placed next to each other for this (dma-placement.ts: 64 calls cost
   * 0.2-3 ms before the unmap could be answered; issue 16).
   */
  #release(removed: readonly DmaMapping[]): void {
    // Every entry of this table is one map() or mapRemote() added (the latter without a mapping).
    const mappings = (removed as readonly FrontEntry[]).flatMap((entry) => entry.mapping ?? []);
    try {
      this.#unmapCalls += Mapping.unmapMany(mappings);
    } finally {
      // Out of the table either way (one whose unmap failed stays mapped until its buffer is collected).
      for (const m of mappings) this.placement.released(m);
    }
  }
}
