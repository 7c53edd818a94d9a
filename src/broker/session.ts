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

import { CONFIG_SPACE_SIZE, LeaseBars, PCI_BASE_ADDRESS_0, PCI_NUM_BARS } from '../drivers/config-space.js';
import type { SliceSpec } from '../drivers/driver.js';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
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
import { checkDmaFd } from '../vfio/user/dma-fd-check.js';
import type { IoFdSubRegion, RegionIoFds } from '../vfio/user/region-io-fds.js';
import { deviceRefusal } from './device-refusal.js';
import { adoptEventFd } from './eventfd-check.js';
import type { Lease } from './lease.js';
import { LeaseMsix } from './lease-msix.js';
import type { LeaseTable } from './leases.js';
import { infoRegionCaps, sliceRegionCaps } from './region-caps.js';
import { encodePciState, restorePciState, type SessionPciState } from './session-state.js';

/**
 * devlease's notice irq: index 5, the first past VFIO_PCI_NUM_IRQS (QEMU never looks there). Offered only to
 * clients that proposed devlease in VERSION; signalled for per-queue faults, which never signal ERR.
 */
export const DEVLEASE_NOTICE_IRQ_INDEX = VFIO_PCI_NUM_IRQS;

/** The devlease info region: index 9, the first device-specific region. */
export const INFO_REGION_INDEX = VFIO_PCI_NUM_REGIONS;
/** Room for the JSON: up to 16 faults and dozens of granule regions fit with margin. */
export const INFO_REGION_SIZE = 16384;

const DMA_READ = 1;
const DMA_WRITE = 2;

export class LeaseSession implements VfioUserDeviceModel {
  readonly #lease: Lease;
  readonly #table: LeaseTable;
  readonly #config: Uint8Array;
  readonly #bars: LeaseBars;
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
    this.#config = table.driver.leaseConfigSpace(lease.resources);
    this.#msix = LeaseMsix.for(lease.resources);
    this.#msix?.install(this.#config);
    // BAR types as the driver mirrored them from the device; sizes as REGION_INFO gives them (the slices).
    const sizes = new Map(lease.resources.slices.map((s) => [s.leaseRegion, s.size]));
    if (this.#msix) sizes.set(this.#msix.bar, BigInt(this.#msix.size));
    this.#bars = new LeaseBars(this.#config, sizes);
    if (opts.pci) restorePciState(opts.pci, this.#config, this.#msix);
    this.#page = BigInt(table.config.layout.pageSize);
  }

  get lease(): Lease {
    return this.#lease;
  }

  /** The virtual config space and MSI-X table as the client left them (an upgrade carries them). */
  pciState(): SessionPciState {
    return encodePciState(this.#config, this.#msix);
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

  regionInfo(index: number, opts: { fd?: boolean } = {}): RegionDescription {
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
    this.#checkLive();
    if (opts.fd !== false) this.#controlRequest();
    // An audited slice (a kernel device): the device fd itself, once, with the slice's mmap offset on it.
    const direct = this.#direct(slice, opts.fd !== false);
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
   * of the slice on it, the first time the client asks with an fd; the auditor starts watching then. Without an
   * fd (a validation) or once handed out: null, and the region is reached through the broker.
   */
  #direct(slice: SliceSpec, withFd: boolean): RegionDescription | null {
    const direct = this.#table.direct;
    if (!direct || slice.isolation.level !== 'audited' || slice.mappable === false || !withFd) return null;
    const h = direct.handOut(this.#lease, slice);
    if (!h) return null;
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    return {
      index: slice.leaseRegion,
      flags: rw | VFIO_REGION_INFO_FLAG_MMAP,
      size: slice.size,
      offset: h.offset,
      caps: sliceRegionCaps(slice.size),
      fd: h.fd,
    };
  }

  /** A control request of an audited lease: its holder is past connect(); the audit scans (not on this path). */
  #controlRequest(handOffDone = false): void {
    this.#table.direct?.onRequest(this.#lease.id, handOffDone);
  }

  async regionRead(index: number, offset: bigint, count: number): Promise<Uint8Array> {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX)
      return this.#config.slice(Number(offset), Number(offset) + count);
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
    this.#checkLive();
    return this.#device('REGION_READ', `region ${index} +0x${offset.toString(16)}, ${count} bytes`, () =>
      this.#table.device.read(slice.region, slice.offset + offset, count),
    );
  }

  async regionWrite(index: number, offset: bigint, data: Uint8Array): Promise<void> {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.#configWrite(Number(offset), data);
    if (index === INFO_REGION_INDEX) throw new VfioError('EPERM', 'the info region is read-only');
    if (this.#msix && index === this.#msix.bar) return this.#msix.write(Number(offset), data);
    const slice = this.#needSlice(index);
    this.#checkLive();
    await this.#device(
      'REGION_WRITE',
      `region ${index} +0x${offset.toString(16)}, ${data.byteLength} bytes`,
      () => this.#table.device.write(slice.region, slice.offset + offset, data),
    );
  }

  #configWrite(offset: number, data: Uint8Array): void {
    if (this.#msix?.configWrite(this.#config, offset, data)) return;
    const dv = new DataView(this.#config.buffer, this.#config.byteOffset);
    // BARs behave as real ones (all-ones reads back the size mask with the type bits; an address is kept,
    // though nothing is decoded at it); dword writes only, as BARs are sized. Command/status: stored, no
    // effect. Everything else: read-only.
    const barsEnd = PCI_BASE_ADDRESS_0 + 4 * PCI_NUM_BARS;
    if (offset >= PCI_BASE_ADDRESS_0 && offset < barsEnd && data.byteLength === 4 && offset % 4 === 0) {
      const v = new DataView(data.buffer, data.byteOffset).getUint32(0, true);
      dv.setUint32(offset, this.#bars.afterWrite((offset - PCI_BASE_ADDRESS_0) / 4, v), true);
      return;
    }
    if (offset < 0x10) this.#config.set(data.subarray(0, Math.max(0, 0x10 - offset)), offset);
  }

  dmaMap(req: DmaMapRequest): Promise<void> {
    this.#controlRequest();
    return this.#lease.track(this.#dmaMap(req));
  }

  async #dmaMap(req: DmaMapRequest): Promise<void> {
    const lease = this.#lease;
    let unreserve: (() => void) | null = null;
    try {
      this.#checkLive();
      if (!req.fd)
        throw new VfioError('EINVAL', 'DMA_MAP needs an fd: only fd-backed memory can be mapped for a lease');
      const w = lease.resources.view;
      if (!w) throw new VfioError('EPERM', `lease kind '${lease.kind}' has no IOVA window`);
      if (req.iova % this.#page || req.size % this.#page || req.size === 0n) {
        throw new VfioError(
          'EINVAL',
          `iova 0x${req.iova.toString(16)} and size 0x${req.size.toString(16)} must be non-zero multiples of the ${this.#page}-byte page`,
        );
      }
      if (req.iova < w.base || req.iova + req.size > w.base + w.size) {
        throw new VfioError(
          'EPERM',
          `[0x${req.iova.toString(16)}, +0x${req.size.toString(16)}) is outside the lease's IOVA ${w.mode === 'translated' ? 'view' : 'window'} [0x${w.base.toString(16)}, +0x${w.size.toString(16)})`,
        );
      }
      const read = (req.flags & DMA_READ) !== 0;
      const write = (req.flags & DMA_WRITE) !== 0;
      // A pipe, an empty memfd, a range past the end: refused here, by name, rather than by the device.
      checkDmaFd(req.fd, { offset: req.offset, size: req.size, write });
      // Checked against usage that counts maps still in flight (released in `finally`), so concurrent
      // DMA_MAPs of one uid cannot pass a limit together.
      const usage = this.#table.usage(lease.ctx);
      unreserve = this.#table.reserveMap(lease.ctx.uid, req.size);
      const verdict = await this.#table.policy.checkMap(
        lease.ctx,
        { op: 'map', iova: req.iova, size: req.size, read, write },
        usage,
      );
      if (!verdict.allow) {
        this.#table.audit.write({
          event: 'deny-map',
          lease: lease.id,
          pid: lease.ctx.pid,
          uid: lease.ctx.uid,
          reason: verdict.reason,
        });
        throw new VfioError('EACCES', verdict.reason);
      }
      const fd = req.fd;
      const deviceIova = toDevice(lease, req.iova);
      const mapped = this.#device('DMA_MAP', range(req.iova, req.size), () =>
        this.#table.device.dmaMap({ fd, offset: req.offset, iova: deviceIova, size: req.size, read, write }),
      );
      // Sent to the device: the connection may start the session's next pipelined request (its device call
      // queues behind this one on the device connection, which serves in order).
      req.issued?.();
      await mapped;
      if (!lease.live) {
        // Reclaim started while the device mapped it: undo, so nothing of this client stays mapped.
        await this.#table.device.dmaUnmap(deviceIova, req.size);
        throw new VfioError('ENODEV', `lease ${lease.id} is ${lease.state}`);
      }
      lease.mappings.set(req.iova, { iova: req.iova, deviceIova, size: req.size, read, write });
    } finally {
      unreserve?.();
      req.fd?.close(); // the device holds its own reference now (or the map was refused)
    }
  }

  async dmaUnmap(req: DmaUnmapRequest): Promise<void> {
    const lease = this.#lease;
    const end = req.iova + req.size;
    const hit = [...lease.mappings.values()].filter((m) => m.iova >= req.iova && m.iova + m.size <= end);
    const partial = [...lease.mappings.values()].some(
      (m) => m.iova < end && m.iova + m.size > req.iova && !hit.includes(m),
    );
    if (partial) throw new VfioError('EINVAL', 'DMA_UNMAP must cover whole mappings');
    if (hit.length === 0)
      throw new VfioError(
        'ENOENT',
        `no mapping of this lease in [0x${req.iova.toString(16)}, +0x${req.size.toString(16)})`,
      );
    // Unmaps pass the policy too (a module may audit or veto them); the declarative limits concern maps only.
    const verdict = await this.#table.policy.checkMap(
      lease.ctx,
      { op: 'unmap', iova: req.iova, size: req.size },
      this.#table.usage(lease.ctx),
    );
    if (!verdict.allow) throw new VfioError('EACCES', verdict.reason);
    for (const m of hit) {
      await this.#device('DMA_UNMAP', range(m.iova, m.size), () =>
        this.#table.device.dmaUnmap(m.deviceIova, m.size),
      );
      lease.mappings.delete(m.iova);
    }
  }

  irqInfo(index: number): IrqDescription {
    const count =
      index === VFIO_PCI_MSIX_IRQ_INDEX
        ? this.#lease.resources.vectors.length
        : index === VFIO_PCI_ERR_IRQ_INDEX ||
            index === VFIO_PCI_REQ_IRQ_INDEX ||
            (index === DEVLEASE_NOTICE_IRQ_INDEX && this.#devlease)
          ? 1
          : 0;
    return { index, flags: count ? VFIO_IRQ_INFO_EVENTFD : 0, count };
  }

  setIrqs(req: IrqSetRequest): Promise<void> {
    this.#controlRequest();
    return this.#lease.track(this.#setIrqs(req));
  }

  async #setIrqs(req: IrqSetRequest): Promise<void> {
    const lease = this.#lease;
    const fds = req.fds;
    try {
      this.#checkLive();
      const dataType = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
      if (
        dataType !== VFIO_IRQ_SET_DATA_EVENTFD &&
        !(dataType === VFIO_IRQ_SET_DATA_NONE && req.count === 0)
      ) {
        throw new VfioError(
          'EINVAL',
          'a lease takes eventfds (DATA_EVENTFD) or DATA_NONE with count 0 (disable)',
        );
      }
      // Only real eventfds, made non-blocking: a pipe or a full counter must never stall the broker or the device.
      for (const fd of fds) if (fd) adoptEventFd(fd);
      const notice = req.index === DEVLEASE_NOTICE_IRQ_INDEX && this.#devlease;
      if (req.index === VFIO_PCI_ERR_IRQ_INDEX || req.index === VFIO_PCI_REQ_IRQ_INDEX || notice) {
        const slot = notice ? 'noticeFd' : req.index === VFIO_PCI_ERR_IRQ_INDEX ? 'errFd' : 'reqFd';
        lease[slot]?.close();
        lease[slot] = dataType === VFIO_IRQ_SET_DATA_EVENTFD ? (fds[0] ?? null) : null;
        fds.length = 0; // ownership moved to the lease
        return;
      }
      if (req.index !== VFIO_PCI_MSIX_IRQ_INDEX)
        throw new VfioError('EINVAL', `irq index ${req.index} has no vectors in this lease`);
      const vectors = lease.resources.vectors;
      // DATA_NONE with count 0: disable every vector of the index (VFIO semantics).
      const disableAll = dataType === VFIO_IRQ_SET_DATA_NONE;
      const first = disableAll ? 0 : req.start;
      const count = disableAll ? vectors.length : req.count;
      const physicalIndex = lease.resources.irqIndex ?? VFIO_PCI_MSIX_IRQ_INDEX;
      for (let i = 0; i < count; i++) {
        const physical = vectors[first + i]!;
        const fd = disableAll ? null : (fds[i] ?? null);
        // The client's eventfd goes straight to the device: the broker is not on the interrupt path.
        const wired = this.#device('SET_IRQS', `MSI-X vector ${first + i}`, () =>
          this.#table.device.setIrqs(physicalIndex, physical, [fd]),
        );
        if (i === count - 1) req.issued?.(); // the last device call is sent (see dmaMap)
        await wired;
        if (fd && !lease.live) {
          // Reclaim started while we wired it: take it back rather than leave a vector aimed at this client.
          await this.#table.device.setIrqs(physicalIndex, physical, [null]);
          throw new VfioError('ENODEV', `lease ${lease.id} is ${lease.state}`);
        }
      }
    } finally {
      for (const fd of fds) fd?.close();
    }
  }

  async reset(): Promise<void> {
    this.#controlRequest();
    this.#checkLive();
    await this.#device('DEVICE_RESET', 'of the lease', () =>
      this.#table.driver.resetLease(this.#lease.resources),
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
    this.#checkLive();
    const asked = this.#device('GET_REGION_IO_FDS', `region ${index}`, () =>
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
    void this.#table.reclaim(this.#lease, `session closed: ${reason}`);
  }

  /**
   * A device call for this lease. A refusal by the device reaches the client with the device's errno and
   * reason, and is logged as one line, rate-limited per lease and request (a client retrying in a loop
   * must not flood the log).
   */
  async #device<T>(op: string, detail: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      const refusal = deviceRefusal(err, `${op} ${detail}`);
      if (!refusal) throw err;
      const l = this.#lease;
      this.#table.refusals.log(`lease ${l.id} ${op}`, `lease ${l.id} (pid ${l.ctx.pid}): ${refusal.line}`);
      throw refusal.error;
    }
  }

  #needSlice(index: number) {
    const s = this.#slice(index);
    if (!s) throw new VfioError('EINVAL', `region ${index} is not part of this lease`);
    return s;
  }

  #checkLive(): void {
    if (!this.#lease.live) throw new VfioError('ENODEV', `lease ${this.#lease.id} is ${this.#lease.state}`);
  }
}

/** The device IOVA of a client's IOVA: its view's base is the lease window's base (identity: the same). */
function toDevice(lease: Lease, iova: bigint): bigint {
  const { window, view } = lease.resources;
  return window && view ? iova - view.base + window.base : iova;
}

function range(iova: bigint, size: bigint): string {
  return `[0x${iova.toString(16)}, +0x${size.toString(16)})`;
}
