// The simulator's owner connection: Sa1Frontend is the VfioUserDeviceModel
// the vfio-user server calls for it, over the DeviceWorker (device-worker.ts).
// It owns the Fd objects that came with requests until the device says it no
// longer uses them.
//
// Register accesses that only read or store register state (all of BAR0 but
// CONTROL, FW_CMD and Q_CTRL writes; config space but writes reaching the
// command register; BAR2 and BAR4 from the slices' memory while the owner has
// memory without an fd, slice-access.ts) are served here, with no round trip
// to the worker thread. So are the owner
// commands that only touch tables: SET_IRQS (irq-table.ts), GET_REGION_IO_FDS
// (the front end made the kick fds), and DMA_MAP/DMA_UNMAP (dma-table.ts:
// checked against the front end's copy of the IOMMU table, answered, and
// posted to the worker one way; an unmap waits only while the engine is
// inside a round). Everything else is a request the worker serves between
// descriptors (mailbox.ts), waited for synchronously — or, while the owner
// has memory without an fd, which the device reaches through this thread
// (remote-dma.ts), without blocking it.

import { VfioError } from '../../errors.js';
import { type Fd, native } from '../../sys/index.js';
import { decodeDmaBufRevokePayload } from '../../vfio/uapi/payloads.js';
import {
  DMA_BUF_REVOKE_FLAG_DETACH,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../../vfio/uapi/vfio.js';
import type {
  DmaMapRequest,
  DmaUnmapRequest,
  FeatureReply,
  FeatureRequest,
  IrqDescription,
  IrqSetRequest,
  RegionDescription,
  VfioUserDeviceModel,
} from '../../vfio/user/device-model.js';
import type { PeerDma } from '../../vfio/user/peer-dma.js';
import {
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
} from '../../vfio/user/protocol.js';
import type { RegionIoFds } from '../../vfio/user/region-io-fds.js';
import type { Sa1Options } from '../model/options.js';
import type { DeviceWorker } from './device-worker.js';
import { sa1RegionIoFds } from './io-fds.js';

export { DEFAULT_COMMAND_TIMEOUT_MS, DeviceWorker } from './device-worker.js';

/**
 * The owner's view of the device: one per connection, which owns the device once its VERSION has taken the
 * seat (`claim`, owner-seat.ts). The server serves nothing else before a successful VERSION, so only the owner's
 * requests reach the device, and only the owner's disconnect resets it.
 */
export class Sa1Frontend implements VfioUserDeviceModel {
  /** eventfds given with SET_IRQS, per irq index and vector. */
  readonly #irqs: (Fd | null)[][];
  #gone = false;
  /** Frees the owner's seat: set once this connection's VERSION took it. */
  #release: (() => void) | null = null;
  /** The owner's memory through DMA_READ/DMA_WRITE, for maps without an fd (datasheet rev 2 §7). */
  #peer: PeerDma | null = null;

  constructor(
    readonly device: DeviceWorker,
    private readonly claim: () => Promise<() => void>,
  ) {
    const o = device.options;
    this.#irqs = [[], [], new Array(o.numQueues + 1).fill(null), [null], [null]];
  }

  /** VERSION: this connection becomes the owner, or is refused EBUSY (owner-seat.ts). */
  async negotiate(): Promise<Record<string, unknown>> {
    // A connection that hung up while it waited takes nothing (owner-seat.ts): its disconnect comes after.
    this.#release = await this.claim();
    return {};
  }

  /** The connection's DMA_READ/DMA_WRITE, given once VERSION succeeded (so only to the owner). */
  peerDma(dma: PeerDma): void {
    this.#peer = dma;
    this.device.remote.peer = dma;
  }

  /**
   * While the owner has memory without an fd the device may be waiting on this thread for it
   * (remote-dma.ts): a command the device must serve is then waited for without blocking the thread.
   */
  get #waitAsync(): boolean {
    return this.device.waitsAsyncNow;
  }

  get options(): Sa1Options {
    return this.device.options;
  }

  deviceInfo(): { flags: number; num_regions: number; num_irqs: number } {
    return {
      flags: VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI,
      num_regions: VFIO_PCI_NUM_REGIONS,
      num_irqs: VFIO_PCI_NUM_IRQS,
    };
  }

  regionInfo(index: number): RegionDescription {
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const size = this.device.regionSize(index);
    // No region offers an fd: BAR0 is owner-only registers, BAR2/BAR4 slices come through the dma-buf feature.
    return size === 0
      ? { index, flags: 0, size: 0n, offset: 0n }
      : { index, flags: rw, size: BigInt(size), offset: 0n };
  }

  /** Doorbell notification (rev 2): one ioeventfd per queue page of BAR2 (io-fds.ts). */
  regionIoFds(index: number, opts: { maxFds?: number } = {}): RegionIoFds {
    return sa1RegionIoFds(
      this.options,
      index,
      () => this.device.kickFds(),
      () => this.device.kicksHandedOut(),
      opts.maxFds,
    );
  }

  regionRead(index: number, offset: bigint, count: number): Uint8Array {
    return this.device.regionRead(index, Number(offset), count);
  }

  regionWrite(index: number, offset: bigint, data: Uint8Array): void | Promise<void> {
    if (this.#waitAsync) return this.device.regionWriteAsync(index, Number(offset), data);
    this.device.regionWrite(index, Number(offset), data);
  }

  dmaMap(req: DmaMapRequest): void {
    const fd = req.fd;
    const access = {
      iova: req.iova,
      size: req.size,
      read: (req.flags & VFIO_USER_F_DMA_REGION_READ) !== 0,
      write: (req.flags & VFIO_USER_F_DMA_REGION_WRITE) !== 0,
    };
    if (!fd) {
      // Datasheet rev 2 §7: memory without an fd is reached with DMA_READ/DMA_WRITE to the owner.
      if (!this.#peer) throw new VfioError('EINVAL', 'a DMA map without an fd needs a negotiated owner');
      this.device.checkOpen();
      this.device.dma.mapRemote(access);
      return;
    }
    try {
      this.device.checkOpen();
      this.device.dma.map(fd, { offset: req.offset, ...access });
    } finally {
      fd.close(); // the mapping keeps the memory
    }
  }

  dmaUnmap(req: DmaUnmapRequest): void | Promise<void> {
    this.device.checkOpen();
    const all = (req.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    if (!this.#waitAsync) {
      this.device.dma.unmap(req.iova, req.size, all);
      return;
    }
    // An access the device is making into the range fails now (§7: it completes as IOMMU_FAULT; the table
    // tells remote-dma.ts of the unmap as it posts it): the owner may not serve it while it waits for this reply.
    return this.device.dma.unmapAsync(req.iova, req.size, all, (wait) => this.device.remote.failFast(wait));
  }

  irqInfo(index: number): IrqDescription {
    const count = this.device.irqs.count(index);
    return { index, flags: count ? VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE : 0, count };
  }

  setIrqs(req: IrqSetRequest): void {
    const slots = this.#irqs[req.index] ?? [];
    const dataType = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
      // The device switches to the new numbers first; only then are the old Fds closed.
      const next = req.fds;
      try {
        this.device.checkOpen();
        this.device.irqs.set(
          req.index,
          req.start,
          next.map((f) => (f ? f.fd : -1)),
        );
      } catch (err) {
        for (const f of next) f?.close();
        throw err;
      }
      next.forEach((f, i) => {
        slots[req.start + i]?.close();
        slots[req.start + i] = f;
      });
    } else if (dataType === VFIO_IRQ_SET_DATA_NONE && req.count === 0) {
      this.device.checkOpen();
      this.device.irqs.set(
        req.index,
        0,
        slots.map(() => -1),
      );
      slots.forEach((f, i) => {
        f?.close();
        slots[i] = null;
      });
    } else {
      // Loopback trigger (DATA_NONE with a range, or DATA_BOOL): signal the eventfds directly.
      for (let i = 0; i < req.count; i++) {
        const fire =
          dataType === VFIO_IRQ_SET_DATA_NONE || (dataType === VFIO_IRQ_SET_DATA_BOOL && req.bools?.[i]);
        const f = slots[req.start + i];
        if (fire && f) native.eventfdWrite(f.fd, 1);
      }
    }
  }

  reset(): void | Promise<void> {
    if (this.#waitAsync) {
      // The reset aborts whatever the device is doing: accesses it makes through the owner fail until it took
      // the reset, as the owner (QEMU) serves none while it waits for this reply.
      return this.device.resetAsync();
    }
    this.device.request({ op: 'reset' });
  }

  feature(req: FeatureRequest): FeatureReply | Promise<FeatureReply> {
    let reply: FeatureReply | Promise<FeatureReply>;
    try {
      reply = this.#feature(req);
    } catch (err) {
      for (const f of req.fds) f.close();
      throw err;
    }
    // The fds passed stay open until the device is done with them (a revoke waited for without blocking).
    if (!(reply instanceof Promise)) {
      for (const f of req.fds) f.close();
      return reply;
    }
    return reply.finally(() => {
      for (const f of req.fds) f.close();
    });
  }

  #feature(req: FeatureRequest): FeatureReply | Promise<FeatureReply> {
    const probe = (req.flags & VFIO_DEVICE_FEATURE_PROBE) !== 0;
    const get = (req.flags & VFIO_DEVICE_FEATURE_GET) !== 0;
    const set = (req.flags & VFIO_DEVICE_FEATURE_SET) !== 0;
    if (req.feature === VFIO_DEVICE_FEATURE_DMA_BUF) {
      if (set) throw new VfioError('EINVAL', 'the dma-buf feature supports GET only');
      if (probe) return {};
      return { data: req.data, fds: this.device.openSlices(req.data) };
    }
    if (req.feature === VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE) {
      if (get) throw new VfioError('EINVAL', 'the revoke feature supports SET only');
      if (probe) return {};
      if (req.data.length < 4) throw new VfioError('EINVAL', 'revoke needs { s32 fd_index; u32 flags }');
      const { fd_index, flags } = decodeDmaBufRevokePayload(req.data);
      if (flags & ~DMA_BUF_REVOKE_FLAG_DETACH) {
        throw new VfioError('EINVAL', `revoke flags 0x${flags.toString(16)}: only DETACH (1) is defined`);
      }
      const fd = req.fds[fd_index];
      if (!fd)
        throw new VfioError('EINVAL', `fd_index ${fd_index} names none of the ${req.fds.length} fds passed`);
      const done = this.device.revoke(fd.fd, !(flags & DMA_BUF_REVOKE_FLAG_DETACH));
      return done ? done.then(() => ({})) : {};
    }
    throw new VfioError('ENOTSUP', `device feature ${req.feature} is not supported by SA-1`);
  }

  disconnected(_reason: string): void | Promise<void> {
    if (this.#gone) return;
    this.#gone = true;
    // Never the owner (silent, refused at VERSION, or gone before it): the owner's device is left alone.
    const release = this.#release;
    if (release === null) return;
    // First: an access the device makes to the owner's memory without an fd fails at once from now on, so the
    // device never waits on this thread while it is blocked below.
    if (this.#peer) this.device.remote.peer = null;
    this.#peer = null;
    // A command still waited for without blocking (the owner's memory without an fd) ends first: the device
    // takes one command at a time.
    if (this.device.commandInFlight) return this.device.settled().then(() => this.#leave(release));
    this.#leave(release);
  }

  #leave(release: () => void): void {
    try {
      this.device.request({ op: 'disconnect' });
    } catch {
      // the device is shutting down: its mappings go with it
    }
    // Each step on its own, and the device freed for the next owner whatever failed (an unmap the OS refused:
    // the connection logs a throw from here).
    try {
      this.device.dma.releaseAll();
    } finally {
      try {
        this.device.irqs.clear();
      } catch {
        // a worker stuck in an eventfd write: closing the fds is still right, the device is gone
      }
      try {
        for (const slots of this.#irqs) {
          slots.forEach((f, i) => {
            f?.close();
            slots[i] = null;
          });
        }
      } finally {
        release();
      }
    }
  }
}
