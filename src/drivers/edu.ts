// Driver for QEMU's `edu` teaching device (1234:11e8, QEMU docs/specs/edu.rst),
// the device the real-kernel tests drive through vfio-pci. It offers one lease
// kind, `dma`: BAR0 whole (cooperative: reached through the broker's
// REGION_READ/WRITE, since the kernel gives no mappable, revocable slice fd),
// an IOVA window the broker maps the client's memory into, and the device's
// one MSI vector. One lease at a time: edu has one DMA engine and one BAR.

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import { VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../vfio/uapi/pci-regs.js';
import { VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSI_IRQ_INDEX } from '../vfio/uapi/vfio.js';
import { type BarType, barTypeAt, leaseConfigSpaceOf, readBarTypes } from './config-space.js';
import {
  type Driver,
  type DriverConfig,
  type DriverFactory,
  type Isolation,
  identityView,
  type LeaseRequest,
  type LeaseResources,
} from './driver.js';
import { pollUntil } from './poll.js';

export const EDU_VENDOR = 0x1234;
export const EDU_DEVICE = 0x11e8;
export const EDU_BAR = 0;
export const EDU_BAR_SIZE = 1n << 20n;

/** BAR0 registers. Below 0x80 only 4-byte accesses work (8-byte reads return all-ones). */
export const EDU = {
  ID: 0x00, // 0xRRrr00ed: major, minor, 0x00ed
  LIVENESS: 0x04, // reads back the bitwise NOT of what was written
  FACTORIAL: 0x08,
  STATUS: 0x20, // bit0 computing factorial, bit7 raise an interrupt when done
  IRQ_STATUS: 0x24,
  IRQ_RAISE: 0x60,
  IRQ_ACK: 0x64,
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  DMA_CMD: 0x98,
} as const;
export const EDU_DMA_CMD = { START: 1 << 0, TO_RAM: 1 << 1, IRQ: 1 << 2 } as const;
export const EDU_IRQ = { FACTORIAL: 0x1, DMA: 0x100 } as const;
/** The device-side DMA buffer (4 KiB) in edu's own address space, not in BAR0. */
export const EDU_DMA_BUFFER = 0x40000n;
export const EDU_DMA_BUFFER_SIZE = 4096;

/**
 * edu masks every DMA address to 28 bits (its dma_mask), so the window must
 * sit below 256 MiB: 64 MiB at 16 MiB, clear of the low pages.
 */
export const EDU_WINDOW = { base: 16n << 20n, size: 64n << 20n } as const;

const BAR_ISOLATION: Isolation = {
  level: 'cooperative',
  reason:
    'BAR0 is reached through the broker (REGION_READ/WRITE): the kernel gives no mappable, revocable slice fd ' +
    '(its dma-buf fds cannot be mmapped or revoked) and edu has nothing that separates clients; one lease at a time',
};

export class EduDriver extends EventEmitter implements Driver {
  readonly name = 'edu';
  readonly #dev: Device;
  readonly #cfg: DriverConfig;
  #version = '';
  /** BAR0's type, mirrored in the lease's config space. */
  #barType: BarType | null = null;
  #leased = false;

  constructor(dev: Device, cfg: DriverConfig) {
    super();
    this.#dev = dev;
    this.#cfg = cfg;
  }

  kinds(): string[] {
    return ['dma'];
  }

  /** Check that this is a live edu, let a previous owner's DMA finish, clear interrupts, enable bus master. */
  async boot(): Promise<void> {
    const d = this.#dev;
    const bar = await d.region(EDU_BAR);
    if (bar.size < EDU_BAR_SIZE) throw new Error(`edu: BAR0 is ${bar.size} bytes, expected at least 1 MiB`);
    const id = await d.read32(EDU_BAR, EDU.ID);
    if ((id & 0xffff) !== 0x00ed) {
      throw new Error(`edu: ID register reads 0x${id.toString(16)}, expected 0x010000ed (0xRRrr00ed)`);
    }
    this.#version = `${id >>> 24}.${(id >>> 16) & 0xff}`;
    const probe = 0x5a5a_1234;
    await d.write32(EDU_BAR, EDU.LIVENESS, probe);
    const back = await d.read32(EDU_BAR, EDU.LIVENESS);
    if (back !== ~probe >>> 0) {
      throw new Error(
        `edu: liveness register returned 0x${back.toString(16)} for 0x${probe.toString(16)}, expected its inverse`,
      );
    }
    this.validateLayout();
    this.#barType = barTypeAt(await readBarTypes(d), EDU_BAR);
    await this.#waitIdle();
    await this.#clearInterrupts();
    await this.#enableBusMaster();
  }

  /** The window must be inside an IOVA range the IOMMU accepts (and below edu's 28-bit DMA mask). */
  validateLayout(): void {
    const { base, size } = EDU_WINDOW;
    const ok = this.#dev.iovaRanges().some((r) => base >= r.start && base + size - 1n <= r.last);
    if (!ok) {
      const ranges = this.#dev
        .iovaRanges()
        .map((r) => `[0x${r.start.toString(16)}, 0x${r.last.toString(16)}]`)
        .join(', ');
      throw new Error(
        `edu: IOVA window [0x${base.toString(16)}, +0x${size.toString(16)}) is outside the IOMMU's ranges ${ranges}`,
      );
    }
  }

  acquire(req: LeaseRequest): LeaseResources {
    if (req.kind !== 'dma') throw new VfioError('EINVAL', `edu offers lease kind 'dma', not '${req.kind}'`);
    if (this.#leased) throw new VfioError('EBUSY', 'edu is leased to another client (one lease at a time)');
    this.#leased = true;
    return {
      kind: 'dma',
      queue: null,
      slices: [
        {
          region: EDU_BAR,
          offset: 0n,
          size: EDU_BAR_SIZE,
          leaseRegion: EDU_BAR,
          leaseOffset: 0n,
          unit: EDU_BAR_SIZE,
          isolation: BAR_ISOLATION,
        },
      ],
      window: { ...EDU_WINDOW },
      view: identityView(EDU_WINDOW, 'edu has no address translation: the client uses the device IOVAs'),
      vectors: [0],
      irqIndex: VFIO_PCI_MSI_IRQ_INDEX,
      devmem: null,
      isolation: {
        bar0: BAR_ISOLATION,
        iovaWindow: {
          level: 'enforced',
          reason:
            'the client never holds the iommufd or container: the broker maps its memory after a window check',
        },
        interrupts: { level: 'enforced', reason: "the client's eventfd is wired to edu's MSI vector only" },
      },
    };
  }

  async activate(): Promise<void> {
    await this.#clearInterrupts();
    await this.#enableBusMaster();
  }

  /** Wait for the DMA engine to stop (edu cannot abort a transfer), then clear what the lease left behind. */
  async quiesce(): Promise<void> {
    await this.#dev.write32(EDU_BAR, EDU.STATUS, 0); // no factorial interrupt for the next holder
    await this.#waitIdle();
    await this.#clearInterrupts();
  }

  async resetLease(): Promise<void> {
    await this.quiesce();
  }

  async recover(): Promise<void> {
    await this.#dev.reset().catch(() => undefined); // edu has no reset method under vfio-pci; boot() re-checks
    await this.boot();
  }

  /** BAR0 is leased cooperatively (no slice fds), so there is no slice memory to clear. */
  async scrub(): Promise<void> {}

  release(): void {
    this.#leased = false;
  }

  /** Only over vfio-user (edu is a kernel device in practice): the lease died with the connection. */
  deviceLost(): void {
    this.#leased = false;
  }

  leaseConfigSpace(): Uint8Array {
    const ids = this.#dev.ids;
    return leaseConfigSpaceOf(ids, this.#barType ? { [EDU_BAR]: this.#barType } : {}, 0x10);
  }

  async status(): Promise<Record<string, unknown>> {
    const d = this.#dev;
    return {
      driver: 'edu',
      version: this.#version,
      leased: this.#leased,
      dmaBusy: ((await d.read32(EDU_BAR, EDU.DMA_CMD)) & EDU_DMA_CMD.START) !== 0,
      irqStatus: await d.read32(EDU_BAR, EDU.IRQ_STATUS),
      window: { base: `0x${EDU_WINDOW.base.toString(16)}`, size: `0x${EDU_WINDOW.size.toString(16)}` },
    };
  }

  close(): void {}

  // ---- broker upgrade (src/broker/handover): see Driver.hold/handover/adopt ----
  // edu has no timer or watcher of its own (its interrupt goes straight to the client's eventfd), so
  // hold/unhold have nothing to stop; the state is whether it is leased and what boot() read.

  async hold(): Promise<void> {}

  unhold(): void {}

  handover(): { state: EduHandoverState; fds: Fd[] } {
    if (!this.#version) throw new Error('edu: not booted: nothing to hand over');
    return { state: { version: this.#version, barType: this.#barType, leased: this.#leased }, fds: [] };
  }

  /**
   * Take edu as the old broker left it (no boot: a lease's DMA may be running, its interrupt pending): check it
   * is still the same live edu — the ID register, the liveness register, bus master on while leased.
   */
  async adopt(state: unknown, _fds: Fd[], leased: LeaseResources[]): Promise<void> {
    const s = state as EduHandoverState;
    if (!s || typeof s.version !== 'string') throw new Error('edu: the handed-over state has no version');
    const d = this.#dev;
    const id = await d.read32(EDU_BAR, EDU.ID);
    const version = `${id >>> 24}.${(id >>> 16) & 0xff}`;
    if ((id & 0xffff) !== 0x00ed || version !== s.version)
      throw new Error(`edu: ID register reads 0x${id.toString(16)}, the old broker had an edu ${s.version}`);
    const probe = 0x1234_a5a5;
    await d.write32(EDU_BAR, EDU.LIVENESS, probe);
    const back = await d.read32(EDU_BAR, EDU.LIVENESS);
    if (back !== ~probe >>> 0)
      throw new Error(`edu: liveness register returned 0x${back.toString(16)}: the device is not answering`);
    this.validateLayout();
    if (leased.length && !s.leased)
      throw new Error('edu: a lease is handed over but the driver had edu free');
    if (s.leased) {
      const cmd = await d.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
      if (!(cmd[0]! & PCI_COMMAND_MASTER))
        throw new Error('edu: leased, but bus master is off in the command register: its DMA cannot run');
    }
    this.#version = s.version;
    this.#barType = s.barType;
    this.#leased = s.leased;
  }

  /** DMA_CMD.START until it reads 0, bounded by lifetime.quiesce_timeout_ms (ETIMEDOUT past it). */
  async #waitIdle(): Promise<void> {
    await pollUntil({
      what: 'edu: DMA (DMA_CMD.START)',
      read: () => this.#dev.read32(EDU_BAR, EDU.DMA_CMD),
      done: (v) => (v & EDU_DMA_CMD.START) === 0,
      timeoutMs: this.#cfg.lifetime.quiesceTimeoutMs,
      intervalMs: 5,
    });
  }

  async #clearInterrupts(): Promise<void> {
    const pending = await this.#dev.read32(EDU_BAR, EDU.IRQ_STATUS);
    if (pending) await this.#dev.write32(EDU_BAR, EDU.IRQ_ACK, pending);
  }

  /** Memory space and bus master on: edu's DMA needs bus master set in config space. */
  async #enableBusMaster(): Promise<void> {
    const d = this.#dev;
    const cmd = await d.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
    const v = new DataView(cmd.buffer, cmd.byteOffset, 2).getUint16(0, true);
    const want = v | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    if (want === v) return;
    const out = new Uint8Array(2);
    new DataView(out.buffer).setUint16(0, want, true);
    await d.write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, out);
  }
}

interface EduHandoverState {
  version: string;
  barType: BarType | null;
  leased: boolean;
}

export const eduDriverFactory: DriverFactory = {
  name: 'edu',
  matches: (d) => d.ids.vendor === EDU_VENDOR && d.ids.device === EDU_DEVICE,
  create: (device, config) => new EduDriver(device, config),
};
