// The main-thread half of the simulator. DeviceWorker starts the device
// worker and holds the register file it shares with it; Sa1Frontend is the
// VfioUserDeviceModel the vfio-user server calls for the owner's connection.
// It owns the Fd objects that came with requests until the device says it no
// longer uses them.
//
// Register accesses that only read or store register state (all of BAR0 but
// CONTROL, FW_CMD and Q_CTRL writes; config space but writes reaching the
// command register) are served here from the register file, with no
// round trip to the worker thread. So are the owner commands that only
// touch tables: SET_IRQS (irq-table.ts), GET_REGION_IO_FDS (the front end
// made the kick fds), and DMA_MAP/DMA_UNMAP (dma-table.ts: checked against
// the front end's copy of the IOMMU table, answered, and posted to the
// worker one way; an unmap waits only while the engine is inside a round).
// Everything else is a request the worker serves between descriptors
// (mailbox.ts), waited for synchronously.

import { MessageChannel, Worker } from 'node:worker_threads';
import { VfioError } from '../../errors.js';
import { Fd, native } from '../../sys/index.js';
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
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
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
import {
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
} from '../../vfio/user/protocol.js';
import type { RegionIoFds } from '../../vfio/user/region-io-fds.js';
import { bar0Read32, bar0WriteDirect, QCTRL_DEVICE, queueControlDirect } from '../model/bar0.js';
import { ConfigSpace, writeReachesCommand } from '../model/config-space.js';
import { BAR0_SIZE } from '../model/datasheet.js';
import { bar2Size, type Sa1Options } from '../model/options.js';
import { checkRegionAccess, regionSize } from '../model/regions.js';
import { RegisterFile, sharedClock } from '../model/register-file.js';
import type { DeviceRequest, DeviceStats } from './commands.js';
import { FrontDmaTable } from './dma-table.js';
import { sa1RegionIoFds } from './io-fds.js';
import { IrqTable } from './irq-table.js';
import { MailboxCaller, newMailboxMemory } from './mailbox.js';
import type { WorkerInit } from './worker.js';

export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

/** The device worker, its mailbox and the register file both threads use. */
export class DeviceWorker {
  readonly #regs: RegisterFile;
  /** Config space over the shared bytes, for the write masks (the device wrote the header). */
  readonly #config: ConfigSpace;
  readonly #mailbox: MailboxCaller<DeviceRequest>;
  readonly #port: MessageChannel['port1'];
  /** The irq eventfd numbers the worker signals (SET_IRQS stores them here). */
  readonly irqs: IrqTable;
  /** The front end's copy of the IOMMU table: DMA_MAP/DMA_UNMAP are checked and answered from it. */
  readonly dma: FrontDmaTable;
  /** The queues' kick ioeventfds (the worker owns and closes them; replies carry dups). */
  readonly #kickFds: number[];
  #worker: Worker;
  #exited: Promise<void>;
  #closed = false;
  /** The worker is gone (closed, or died): the register file no longer describes a live device. */
  #gone = false;

  static async start(options: Sa1Options, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS): Promise<DeviceWorker> {
    const dw = new DeviceWorker(options, timeoutMs);
    await new Promise<void>((resolve, reject) => {
      dw.#worker.once('message', () => resolve());
      dw.#worker.once('error', reject);
      dw.#worker.once('exit', (code) =>
        reject(new Error(`SA-1 device worker exited (${code}) while starting`)),
      );
    });
    return dw;
  }

  private constructor(
    readonly options: Sa1Options,
    readonly timeoutMs: number,
  ) {
    this.#regs = RegisterFile.create(options);
    this.#config = new ConfigSpace(
      { bar0: BAR0_SIZE, bar2: bar2Size(options), bar4: options.devmemSize },
      options.numQueues + 1,
      this.#regs.config,
      false,
    );
    const { port1, port2 } = new MessageChannel();
    const wake = newMailboxMemory();
    this.#port = port1;
    this.#mailbox = new MailboxCaller(wake, port1);
    const irqMemory = IrqTable.memory(options.numQueues);
    this.irqs = new IrqTable(irqMemory, options.numQueues);
    this.dma = new FrontDmaTable(this.#mailbox, timeoutMs);
    const { EFD_NONBLOCK } = native.constants as Record<string, number>;
    this.#kickFds = Array.from({ length: options.numQueues }, () =>
      native.eventfd(0, EFD_NONBLOCK as number),
    );
    const init: WorkerInit = {
      options,
      mailbox: wake,
      port: port2,
      registers: this.#regs.sab,
      irqs: irqMemory,
      kickFds: this.#kickFds,
    };
    this.#worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: init,
      transferList: [port2],
    });
    this.#exited = new Promise((resolve) =>
      this.#worker.once('exit', () => {
        this.#gone = true;
        resolve();
      }),
    );
  }

  regionRead(index: number, offset: number, count: number): Uint8Array {
    this.#checkOpen();
    checkRegionAccess(this.options, index, offset, count);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.#config.read(offset, count);
    if (index !== VFIO_PCI_BAR0_REGION_INDEX) return this.request({ op: 'regionRead', index, offset, count });
    const out = new Uint8Array(count);
    const dv = new DataView(out.buffer);
    const now = sharedClock();
    for (let i = 0; i < count; i += 4) {
      dv.setUint32(i, bar0Read32(this.#regs, offset + i, this.options.numQueues, now), true);
    }
    return out;
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void {
    this.#checkOpen();
    checkRegionAccess(this.options, index, offset, data.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX && !writeReachesCommand(offset, data.length)) {
      this.#config.write(offset, data);
      return;
    }
    if (index !== VFIO_PCI_BAR0_REGION_INDEX) {
      this.request({ op: 'regionWrite', index, offset, data });
      return;
    }
    // Word by word, low half first: each word the device must act on goes to it, in order.
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < data.length; i += 4) {
      const value = dv.getUint32(i, true);
      if (bar0WriteDirect(this.#regs, offset + i, value, this.options.numQueues)) continue;
      const queue = queueControlDirect(this.#regs, offset + i, value, this.options.numQueues);
      if (queue >= 0) {
        // Enabled here; the device latches its copy of the windows before its next round (a doorbell rung
        // after this reply is seen in that round or a later one). Wakes a device asleep for want of queues.
        this.#mailbox.post({ op: 'queueEnabled', queue });
      } else if (queue === QCTRL_DEVICE) {
        this.request({ op: 'regionWrite', index, offset: offset + i, data: data.slice(i, i + 4) });
      }
    }
  }

  /** Size of region `index` (0: not implemented). */
  regionSize(index: number): number {
    return regionSize(this.options, index);
  }

  /** The kick fds to hand out (dups are made of them); from now on the idle device sleeps on them. */
  kickFds(): number[] {
    this.#checkOpen();
    this.#mailbox.kicksHandedOut();
    return this.#kickFds;
  }

  request<T = void>(req: DeviceRequest): T {
    this.#checkOpen();
    return this.#mailbox.call<T>(req, this.timeoutMs);
  }

  stats(): DeviceStats {
    return this.request<DeviceStats>({ op: 'stats' });
  }

  /** Stop the device: every DMA mapping and slice memory is dropped. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#mailbox.call({ op: 'shutdown' }, this.timeoutMs);
      } catch {
        await this.#worker.terminate();
      }
      this.dma.releaseAll(); // the device dropped its views (or is gone): let go of the memory
      this.#port.close();
    }
    await this.#exited;
  }

  checkOpen(): void {
    this.#checkOpen();
  }

  #checkOpen(): void {
    if (this.#closed) throw new VfioError('ENODEV', 'the SA-1 device has shut down');
    if (this.#gone) throw new VfioError('ENODEV', 'the SA-1 device worker exited');
  }
}

/** The owner's view of the device: one per owner connection. */
export class Sa1Frontend implements VfioUserDeviceModel {
  /** eventfds given with SET_IRQS, per irq index and vector. */
  readonly #irqs: (Fd | null)[][];
  #gone = false;

  constructor(
    readonly device: DeviceWorker,
    private readonly onGone: () => void,
  ) {
    const o = device.options;
    this.#irqs = [[], [], new Array(o.numQueues + 1).fill(null), [null], [null]];
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
  regionIoFds(index: number): RegionIoFds {
    return sa1RegionIoFds(this.options, index, () => this.device.kickFds());
  }

  regionRead(index: number, offset: bigint, count: number): Uint8Array {
    return this.device.regionRead(index, Number(offset), count);
  }

  regionWrite(index: number, offset: bigint, data: Uint8Array): void {
    this.device.regionWrite(index, Number(offset), data);
  }

  dmaMap(req: DmaMapRequest): void {
    const fd = req.fd;
    try {
      if (!fd)
        throw new VfioError('EINVAL', 'SA-1 needs an fd with every DMA map (no DMA_READ/DMA_WRITE messages)');
      this.device.checkOpen();
      this.device.dma.map(fd, {
        offset: req.offset,
        iova: req.iova,
        size: req.size,
        read: (req.flags & VFIO_USER_F_DMA_REGION_READ) !== 0,
        write: (req.flags & VFIO_USER_F_DMA_REGION_WRITE) !== 0,
      });
    } finally {
      fd?.close(); // the mapping keeps the memory
    }
  }

  dmaUnmap(req: DmaUnmapRequest): void {
    this.device.checkOpen();
    this.device.dma.unmap(req.iova, req.size, (req.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0);
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

  reset(): void {
    this.device.request({ op: 'reset' });
  }

  feature(req: FeatureRequest): FeatureReply {
    try {
      const probe = (req.flags & VFIO_DEVICE_FEATURE_PROBE) !== 0;
      const get = (req.flags & VFIO_DEVICE_FEATURE_GET) !== 0;
      const set = (req.flags & VFIO_DEVICE_FEATURE_SET) !== 0;
      if (req.feature === VFIO_DEVICE_FEATURE_DMA_BUF) {
        if (set) throw new VfioError('EINVAL', 'the dma-buf feature supports GET only');
        if (probe) return {};
        const { fds } = this.device.request<{ fds: number[] }>({ op: 'dmaBuf', payload: req.data });
        return { data: req.data, fds: fds.map((n) => new Fd(n)) };
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
          throw new VfioError(
            'EINVAL',
            `fd_index ${fd_index} names none of the ${req.fds.length} fds passed`,
          );
        this.device.request({ op: 'revoke', fd: fd.fd, fault: !(flags & DMA_BUF_REVOKE_FLAG_DETACH) });
        return {};
      }
      throw new VfioError('ENOTSUP', `device feature ${req.feature} is not supported by SA-1`);
    } finally {
      for (const f of req.fds) f.close();
    }
  }

  disconnected(_reason: string): void {
    if (this.#gone) return;
    this.#gone = true;
    try {
      this.device.request({ op: 'disconnect' });
    } catch {
      // the device is shutting down: its mappings go with it
    }
    this.device.dma.releaseAll();
    try {
      this.device.irqs.clear();
    } catch {
      // a worker stuck in an eventfd write: closing the fds is still right, the device is gone
    }
    for (const slots of this.#irqs) {
      slots.forEach((f, i) => {
        f?.close();
        slots[i] = null;
      });
    }
    this.onGone();
  }
}
