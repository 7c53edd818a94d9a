// The main-thread half of the simulator. DeviceWorker starts the device
// worker and speaks the mailbox; Sa1Frontend is the VfioUserDeviceModel the
// vfio-user server calls for the owner's connection, forwarding each request
// synchronously. It owns the Fd objects that came with requests until the
// device says it no longer uses them.

import { Worker } from 'node:worker_threads';
import { Fd, native } from '../sys/index.js';
import {
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
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  vfio_device_feature_dma_buf_revoke,
} from '../vfio/uapi/vfio.js';
import {
  type DmaMapRequest,
  type DmaUnmapRequest,
  ERRNO,
  type ErrnoName,
  type FeatureReply,
  type FeatureRequest,
  type IrqDescription,
  type IrqSetRequest,
  type RegionDescription,
  VfioError,
  type VfioUserDeviceModel,
} from '../vfio/user/device-model.js';
import {
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
} from '../vfio/user/protocol.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';
import { type DeviceRequest, type DeviceStats, toBase64 } from './commands.js';
import { BAR0_SIZE, CONFIG_SPACE_SIZE } from './datasheet.js';
import { sa1RegionIoFds } from './io-fds.js';
import { Cmd, Mailbox, MailboxError } from './mailbox.js';
import { bar2Size, type Sa1Options } from './options.js';

export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

function toVfioError(err: unknown): unknown {
  if (err instanceof MailboxError) {
    const code = (err.code in ERRNO ? err.code : 'EIO') as ErrnoName;
    return new VfioError(code, err.message.replace(/^E[A-Z]+: /, ''));
  }
  return err;
}

/** The device worker and its mailbox. */
export class DeviceWorker {
  #mailbox = new Mailbox();
  #worker: Worker;
  #exited: Promise<void>;
  #closed = false;

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
    this.#worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: { options, mailbox: this.#mailbox.sab },
    });
    this.#exited = new Promise((resolve) => this.#worker.once('exit', () => resolve()));
  }

  regionRead(index: number, offset: number, count: number): Uint8Array {
    return this.#guard(() =>
      this.#mailbox.call(
        Cmd.REGION_READ,
        [index, offset % 2 ** 32, Math.floor(offset / 2 ** 32), count],
        null,
        this.timeoutMs,
      ),
    );
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void {
    this.#guard(() =>
      this.#mailbox.call(
        Cmd.REGION_WRITE,
        [index, offset % 2 ** 32, Math.floor(offset / 2 ** 32), 0],
        data,
        this.timeoutMs,
      ),
    );
  }

  request<T = void>(req: DeviceRequest): T {
    return this.#guard(() => this.#mailbox.callJson<T>(req, this.timeoutMs));
  }

  stats(): DeviceStats {
    return this.request<DeviceStats>({ op: 'stats' });
  }

  /** Stop the device: every DMA mapping and slice memory is dropped. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.#mailbox.call(Cmd.SHUTDOWN, [], null, this.timeoutMs);
      } catch {
        await this.#worker.terminate();
      }
    }
    await this.#exited;
  }

  #guard<T>(fn: () => T): T {
    if (this.#closed) throw new VfioError('ENODEV', 'the SA-1 device has shut down');
    try {
      return fn();
    } catch (err) {
      throw toVfioError(err);
    }
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
    const sizes: Record<number, number> = {
      0: BAR0_SIZE,
      2: bar2Size(this.options),
      4: this.options.devmemSize,
      7: CONFIG_SPACE_SIZE,
    };
    const size = sizes[index];
    // No region offers an fd: BAR0 is owner-only registers, BAR2/BAR4 slices come through the dma-buf feature.
    return size === undefined
      ? { index, flags: 0, size: 0n, offset: 0n }
      : { index, flags: rw, size: BigInt(size), offset: 0n };
  }

  /** Doorbell notification (rev 2): one ioeventfd per queue page of BAR2 (io-fds.ts). */
  regionIoFds(index: number): RegionIoFds {
    return sa1RegionIoFds(
      this.options,
      index,
      () => this.device.request<{ fds: number[] }>({ op: 'ioFds' }).fds,
    );
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
      this.device.request({
        op: 'dmaMap',
        fd: fd.fd,
        offset: req.offset,
        iova: req.iova,
        size: req.size,
        read: (req.flags & VFIO_USER_F_DMA_REGION_READ) !== 0,
        write: (req.flags & VFIO_USER_F_DMA_REGION_WRITE) !== 0,
      });
    } finally {
      fd?.close(); // the device's own mapping keeps the memory
    }
  }

  dmaUnmap(req: DmaUnmapRequest): void {
    this.device.request({
      op: 'dmaUnmap',
      iova: req.iova,
      size: req.size,
      all: (req.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0,
    });
  }

  irqInfo(index: number): IrqDescription {
    const counts: Record<number, number> = {
      [VFIO_PCI_MSIX_IRQ_INDEX]: this.options.numQueues + 1,
      [VFIO_PCI_ERR_IRQ_INDEX]: 1,
      [VFIO_PCI_REQ_IRQ_INDEX]: 1,
    };
    const count = counts[index] ?? 0;
    return { index, flags: count ? VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE : 0, count };
  }

  setIrqs(req: IrqSetRequest): void {
    const slots = this.#irqs[req.index] ?? [];
    const dataType = req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    if (dataType === VFIO_IRQ_SET_DATA_EVENTFD) {
      // The device switches to the new numbers first; only then are the old Fds closed.
      const next = req.fds;
      try {
        this.device.request({
          op: 'irqFds',
          index: req.index,
          start: req.start,
          fds: next.map((f) => (f ? f.fd : -1)),
        });
      } catch (err) {
        for (const f of next) f?.close();
        throw err;
      }
      next.forEach((f, i) => {
        slots[req.start + i]?.close();
        slots[req.start + i] = f;
      });
    } else if (dataType === VFIO_IRQ_SET_DATA_NONE && req.count === 0) {
      this.device.request({ op: 'irqFds', index: req.index, start: 0, fds: slots.map(() => -1) });
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
        const { fds } = this.device.request<{ fds: number[] }>({ op: 'dmaBuf', payload: toBase64(req.data) });
        return { data: req.data, fds: fds.map((n) => new Fd(n)) };
      }
      if (req.feature === VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE) {
        if (get) throw new VfioError('EINVAL', 'the revoke feature supports SET only');
        if (probe) return {};
        if (req.data.length < vfio_device_feature_dma_buf_revoke.size) {
          throw new VfioError('EINVAL', 'revoke needs { s32 fd_index }');
        }
        const { fd_index } = vfio_device_feature_dma_buf_revoke.decode(req.data);
        const fd = req.fds[fd_index];
        if (!fd)
          throw new VfioError(
            'EINVAL',
            `fd_index ${fd_index} names none of the ${req.fds.length} fds passed`,
          );
        this.device.request({ op: 'revoke', fd: fd.fd });
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
    for (const slots of this.#irqs) {
      slots.forEach((f, i) => {
        f?.close();
        slots[i] = null;
      });
    }
    this.onGone();
  }
}
