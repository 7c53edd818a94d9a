// One client connection: a vfio-user device made only of the client's lease.
//
// Regions: config space (virtual, with an MSI-X capability when the lease
// has MSI-X vectors), the leased slices at their BAR indexes (mmap-able
// through their own slice fds), the MSI-X table/PBA BAR (trapped), and the
// devlease info region (JSON) at index 9. IRQs: MSI-X (the lease's vectors, wired straight to the
// device), ERR (unrecoverable: hang, unrequested reset), REQ (revocation
// notice), and for devlease clients the notice irq (queue faults). DMA_MAP only
// inside the lease's IOVA view, after policy; a translated view's address V
// is mapped on the device at the lease window's base + V. DEVICE_RESET resets only the
// lease's queue. Nothing else of the device is reachable from here.
// Here: the device's shape and its regions; DMA_MAP/DMA_UNMAP are
// lease-dma.ts, the interrupts lease-irqs.ts.

import { CONFIG_SPACE_SIZE, LeaseBars, PCI_NUM_BARS } from '../drivers/config-space.js';
import type { SliceSpec } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { PCI_BASE_ADDRESS_0 } from '../vfio/uapi/pci-regs.js';
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  vfio_region_info,
} from '../vfio/uapi/vfio.js';
import type {
  DmaMapRequest,
  DmaUnmapRequest,
  FeatureReply,
  FeatureRequest,
  IrqDescription,
  IrqSetRequest,
  Issued,
  RegionDescription,
  VfioUserDeviceModel,
} from '../vfio/user/device-model.js';
import type { PeerDma } from '../vfio/user/peer-dma.js';
import type { IoFdSubRegion, RegionIoFds } from '../vfio/user/region-io-fds.js';
import { leaseDeviceCall } from './device-refusal.js';
import type { Lease } from './lease.js';
import { mapForLease, unmapForLease } from './lease-dma.js';
import { DEVLEASE_NOTICE_IRQ_INDEX, leaseIrqInfo, wireLeaseIrqs } from './lease-irqs.js';
import { LeaseMsix } from './lease-msix.js';
import type { LeaseTable } from './leases.js';
import { infoRegionCaps, sliceRegionCaps } from './region-caps.js';
import { encodePciState, restorePciState, type SessionPciState } from './session-state.js';

export { DEVLEASE_NOTICE_IRQ_INDEX } from './lease-irqs.js';

/** The devlease info region: index 9, the first device-specific region. */
export const INFO_REGION_INDEX = VFIO_PCI_NUM_REGIONS;
/** Room for the JSON: up to 16 faults and dozens of granule regions fit with margin. */
export const INFO_REGION_SIZE = 16384;

export class LeaseSession implements VfioUserDeviceModel {
  readonly #lease: Lease;
  readonly #table: LeaseTable;
  /**
   * The virtual config space and its BARs, built when first read or written: VERSION is answered without them
   * (~30 µs of a cold acquire), and a devlease client never touches them.
   */
  #pci: { config: Uint8Array; bars: LeaseBars } | null = null;
  readonly #page: bigint;
  /** The MSI-X capability and its trapped table/PBA region (lease-msix.ts), when the lease has MSI-X vectors. */
  readonly #msix: LeaseMsix | null;

  /** The client proposed devlease in VERSION: it is told of the notice irq (a stock client never sees it). */
  readonly #devlease: boolean;

  /** Whether the client negotiated devlease (an upgrade carries it). */
  get devlease(): boolean {
    return this.#devlease;
  }

  /** `pci`: the virtual PCI state an upgrade carried (session-state.ts); without it, as at reset. */
  constructor(lease: Lease, table: LeaseTable, opts: { devlease?: boolean; pci?: SessionPciState } = {}) {
    this.#devlease = opts.devlease ?? false;
    this.#lease = lease;
    this.#table = table;
    this.#msix = LeaseMsix.for(lease.resources);
    if (opts.pci) restorePciState(opts.pci, this.#pciSpace().config, this.#msix);
    this.#page = BigInt(table.config.layout.pageSize);
  }

  #pciSpace(): { config: Uint8Array; bars: LeaseBars } {
    if (this.#pci) return this.#pci;
    const config = this.#table.driver.leaseConfigSpace(this.#lease.resources);
    this.#msix?.install(config);
    // BAR types as the driver mirrored them from the device; sizes as REGION_INFO gives them (the slices).
    const sizes = new Map(this.#lease.resources.slices.map((s) => [s.leaseRegion, s.size]));
    if (this.#msix) sizes.set(this.#msix.bar, BigInt(this.#msix.size));
    this.#pci = { config, bars: new LeaseBars(config, sizes) };
    return this.#pci;
  }

  get lease(): Lease {
    return this.#lease;
  }

  /** The virtual config space and MSI-X table as the client left them (an upgrade carries them). */
  pciState(): SessionPciState {
    return encodePciState(this.#pciSpace().config, this.#msix);
  }

  versionCapabilities(): Record<string, unknown> {
    // The info region's JSON as granted comes along, so a devlease client needs no two round trips to read it.
    return {
      devlease: {
        lease: this.#lease.id,
        kind: this.#lease.kind,
        infoRegion: INFO_REGION_INDEX,
        ...(this.#devlease ? { noticeIrq: DEVLEASE_NOTICE_IRQ_INDEX } : {}),
        info: this.#lease.info(),
      },
    };
  }

  deviceInfo(opts: { request?: boolean } = {}) {
    // The client library's last request of connect() after an audited hand-off: the device fd is closed now.
    // (Only the client's own GET_INFO: the server also asks here to validate other requests' bounds.)
    if (opts.request) this.#controlRequest(true);
    const last = Math.max(INFO_REGION_INDEX, ...this.#lease.resources.slices.map((s) => s.leaseRegion));
    return {
      flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
      num_regions: last + 1,
      num_irqs: this.#devlease ? DEVLEASE_NOTICE_IRQ_INDEX + 1 : VFIO_PCI_NUM_IRQS,
    };
  }

  #slice(index: number) {
    return this.#lease.resources.slices.find((s) => s.leaseRegion === index);
  }

  regionInfo(index: number, opts: { fd?: boolean; argsz?: number } = {}): RegionDescription {
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX)
      return { index, flags: rw, size: BigInt(CONFIG_SPACE_SIZE), offset: 0n };
    if (index === INFO_REGION_INDEX) {
      return {
        index,
        flags: VFIO_REGION_INFO_FLAG_READ,
        size: BigInt(INFO_REGION_SIZE),
        offset: 0n,
        caps: infoRegionCaps(),
      };
    }
    // The MSI-X table and PBA: trapped (no MMAP flag, no sparse areas), so the client emulates or traps them.
    if (this.#msix && index === this.#msix.bar)
      return { index, flags: rw, size: BigInt(this.#msix.size), offset: 0n };
    const slice = this.#slice(index);
    if (!slice) return { index, flags: 0, size: 0n, offset: 0n };
    this.#lease.checkLive();
    if (opts.fd !== false) this.#controlRequest();
    // An audited slice (a kernel device): the device fd itself, once, with the slice's mmap offset on it.
    const direct = this.#direct(slice, opts.fd !== false, opts.argsz);
    if (direct) return direct;
    // A lease region is exactly one slice unit (drivers give each unit its own region), so one fd maps it all.
    const unit = this.#lease.slices.get(index)?.[0];
    const fd: Fd | undefined = unit && opts.fd !== false ? unit.handOut(this.#table.watcher) : undefined;
    // Without a slice unit the region is reached only through the broker: no MMAP flag, no sparse-mmap cap.
    return {
      index,
      flags: rw | (unit ? VFIO_REGION_INFO_FLAG_MMAP : 0),
      size: slice.size,
      offset: 0n,
      ...(unit ? { caps: sliceRegionCaps(slice.size) } : {}),
      ...(fd ? { fd } : {}),
    };
  }

  /**
   * The hand-off of an audited slice: the region as mappable, with a new fd of the device and the mmap offset
   * of the slice on it, the first time the client asks with an fd and room for the whole reply; the auditor
   * starts watching then. A request too small for the reply (QEMU asks with argsz 32 first) is answered with the
   * head alone and hands nothing out: the retry gets it. Without an fd (a validation) or once handed out: null,
   * and the region is reached through the broker.
   */
  #direct(slice: SliceSpec, withFd: boolean, argsz: number | undefined): RegionDescription | null {
    const direct = this.#table.direct;
    if (!direct || slice.isolation.level !== 'audited' || slice.mappable === false || !withFd) return null;
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const caps = sliceRegionCaps(slice.size);
    const described = {
      index: slice.leaseRegion,
      flags: rw | VFIO_REGION_INFO_FLAG_MMAP,
      size: slice.size,
      caps,
    };
    if (
      argsz !== undefined &&
      argsz < vfio_region_info.size + caps.byteLength &&
      !direct.handedOut(this.#lease, slice)
    )
      return Object.assign(described, { offset: 0n });
    const h = direct.handOut(this.#lease, slice);
    if (!h) return null;
    return Object.assign(described, { offset: h.offset, fd: h.fd });
  }

  /** A control request of an audited lease: its holder is past connect(); the audit scans (not on this path). */
  #controlRequest(handOffDone = false): void {
    this.#table.direct?.onRequest(this.#lease.id, handOffDone);
  }

  async regionRead(index: number, offset: bigint, count: number): Promise<Uint8Array> {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX)
      return this.#pciSpace().config.slice(Number(offset), Number(offset) + count);
    if (index === INFO_REGION_INDEX) {
      const json = new TextEncoder().encode(`${JSON.stringify(this.#lease.info())}\n`);
      if (json.byteLength > INFO_REGION_SIZE)
        throw new VfioError(
          'EIO',
          `lease info is ${json.byteLength} bytes, more than the ${INFO_REGION_SIZE}-byte info region`,
        );
      const out = new Uint8Array(count);
      out.set(json.subarray(Number(offset), Number(offset) + count));
      return out;
    }
    if (this.#msix && index === this.#msix.bar) return this.#msix.read(Number(offset), count);
    const slice = this.#needSlice(index);
    this.#lease.checkLive();
    return this.#servicing(
      leaseDeviceCall(
        this.#table,
        this.#lease,
        'REGION_READ',
        () => `region ${index} +0x${offset.toString(16)}, ${count} bytes`, // built only for a refusal
        () => this.#table.device.read(slice.region, slice.offset + offset, count),
      ),
    );
  }

  async regionWrite(index: number, offset: bigint, data: Uint8Array): Promise<void> {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.#configWrite(Number(offset), data);
    if (index === INFO_REGION_INDEX) throw new VfioError('EPERM', 'the info region is read-only');
    if (this.#msix && index === this.#msix.bar) return this.#msix.write(Number(offset), data);
    const slice = this.#needSlice(index);
    this.#lease.checkLive();
    await this.#servicing(
      leaseDeviceCall(
        this.#table,
        this.#lease,
        'REGION_WRITE',
        () => `region ${index} +0x${offset.toString(16)}, ${data.byteLength} bytes`,
        () => this.#table.device.write(slice.region, slice.offset + offset, data),
      ),
    );
  }

  /** A BAR access of a lease whose INTx the broker relays services it (lease-intx.ts); others pass as they are. */
  #servicing<T>(access: Promise<T>): Promise<T> {
    const intx = this.#lease.intx;
    return intx ? access.finally(() => intx.serviced()) : access;
  }

  #configWrite(offset: number, data: Uint8Array): void {
    const { config, bars } = this.#pciSpace();
    if (this.#msix?.configWrite(config, offset, data)) return;
    const dv = new DataView(config.buffer, config.byteOffset);
    // BARs behave as real ones (all-ones reads back the size mask with the type bits; an address is kept,
    // though nothing is decoded at it); dword writes only, as BARs are sized. Command/status: stored, no
    // effect. Everything else: read-only.
    const barsEnd = PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS;
    if (offset >= PCI_BASE_ADDRESS_0 && offset < barsEnd && data.byteLength === 4 && offset % 4 === 0) {
      const v = new DataView(data.buffer, data.byteOffset).getUint32(0, true);
      dv.setUint32(offset, bars.afterWrite((offset - PCI_BASE_ADDRESS_0) / 4, v), true);
      return;
    }
    if (offset < 0x10) config.set(data.subarray(0, Math.max(0, 0x10 - offset)), offset);
  }

  dmaMap(req: DmaMapRequest): Promise<void> {
    this.#controlRequest();
    return this.#lease.track(mapForLease(this.#table, this.#lease, this.#page, req));
  }

  dmaUnmap(req: DmaUnmapRequest): Promise<void> {
    return this.#lease.track(unmapForLease(this.#table, this.#lease, req));
  }

  /** The client's memory by message, for what it maps without an fd (lease-dma-relay.ts). */
  peerDma(dma: PeerDma): void {
    this.#lease.peer = dma;
  }

  irqInfo(index: number): IrqDescription {
    return leaseIrqInfo(this.#lease, this.#devlease, index);
  }

  setIrqs(req: IrqSetRequest): Promise<void> {
    this.#controlRequest();
    return this.#lease.track(wireLeaseIrqs(this.#table, this.#lease, this.#devlease, req));
  }

  /**
   * Tracked, as a map is: a reclaim waits for a reset in progress before it stops the queue. Untracked, the
   * reset's last write (SA-1: Q_CTRL.ENABLE) reached the device behind the reclaim's quiesce, and the queue
   * went back to the pool enabled and marked clean.
   */
  reset(): Promise<void> {
    this.#controlRequest();
    this.#lease.checkLive();
    return this.#lease.track(
      leaseDeviceCall(this.#table, this.#lease, 'DEVICE_RESET', 'of the lease', () =>
        this.#table.driver.resetLease(this.#lease.resources),
      ),
    );
  }

  /**
   * Doorbell kicks pass through (SA-1 rev 2): a slice region offers the device's io fds for sub-regions
   * wholly inside the slice, offsets translated to the lease region; every other fd is closed here, so a
   * client gets its own queue page's ioeventfd and nothing else.
   */
  async regionIoFds(index: number, opts: { issued?: Issued } = {}): Promise<RegionIoFds> {
    const slice = this.#slice(index);
    if (!slice) return { subRegions: [], fds: [] };
    this.#lease.checkLive();
    const asked = leaseDeviceCall(this.#table, this.#lease, 'GET_REGION_IO_FDS', `region ${index}`, () =>
      this.#table.device.regionIoFds(slice.region, { offset: slice.offset, size: slice.size }),
    );
    opts.issued?.(); // asked of the device, or answered from its cache (see dmaMap)
    const all = await asked;
    const mine = new Map<number, number>(); // device fd index -> index in our reply
    const subRegions: IoFdSubRegion[] = [];
    const fds: Fd[] = [];
    for (const s of all.subRegions) {
      if (s.offset < slice.offset || s.offset + s.size > slice.offset + slice.size) continue;
      const fd = all.fds[s.fdIndex];
      if (!fd) continue;
      let at = mine.get(s.fdIndex);
      if (at === undefined) {
        at = fds.length;
        mine.set(s.fdIndex, at);
        fds.push(fd);
      }
      subRegions.push({ ...s, offset: s.offset - slice.offset, fdIndex: at });
    }
    for (const fd of all.fds) if (!fds.includes(fd)) fd.close();
    return { subRegions, fds };
  }

  feature(req: FeatureRequest): FeatureReply {
    // The fds came with the request and are ours to close (the connection handed them over): refusing
    // without closing them kept every fd a client attached to DEVICE_FEATURE (found by the fuzz suite).
    for (const fd of req.fds) fd.close();
    throw new VfioError('ENOTSUP', 'a lease offers no device features; its slices are its regions');
  }

  disconnected(reason: string): void {
    this.#lease.peer = null; // closed: its relayed memory is out of reach (lease-dma-relay.ts says so)
    void this.#table.reclaim(this.#lease, `session closed: ${reason}`);
  }

  #needSlice(index: number) {
    const s = this.#slice(index);
    if (!s) throw new VfioError('EINVAL', `region ${index} is not part of this lease`);
    return s;
  }
}
