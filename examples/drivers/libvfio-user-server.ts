// A driver of one's own, complete: libvfio-user's `server` sample
// (samples/server.c; PCI ids dead:beef, subsystem cafe:babe). docs/DRIVERS.md
// walks through it. Name the built file in the broker's config:
//
//   [device]
//   driver = "./libvfio-user-server.js"     # relative to the config file
//
// What the device is, as the sample's source says:
// - BAR0: one time_t, 8-byte accesses only (anything else: EINVAL). A write
//   of T arms a timer for wall-clock second T (T = now disarms it; a past T
//   is refused with EINVAL); a read returns now - (last T written).
// - BAR1: 16 KiB of memory (the sample as patched for the interop suite).
// - INTx only: when the timer fires the sample raises INTx, then DMAs 4 KiB
//   into the second DMA region mapped (through its own mapping of the
//   client's memory) and into the first (DMA_WRITE messages to the broker),
//   reads both back, and exits if anything failed — so a lease must have its
//   INTx eventfd wired and two mapped buffers before it arms the timer.
//
// The lease kind is `timer`: the whole device to one client at a time, BAR0
// through the broker (it cannot be mapped), BAR1 mappable, INTx as the
// lease's vector 0, and a 4 GiB IOVA window. Between clients the driver
// disarms the timer (a DMA into the last client's memory after it left would
// be refused, and the sample would exit) and zeroes BAR1 (the next client
// must not read the last one's data).

import { EventEmitter } from 'node:events';
import {
  type BarType,
  barTypeAt,
  type Device,
  type Driver,
  type DriverFactory,
  type Isolation,
  identityView,
  type LeaseRequest,
  type LeaseResources,
  leaseConfigSpaceOf,
  readBarTypes,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR1_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VfioError,
} from 'devlease/driver';

const VENDOR = 0xdead;
const DEVICE = 0xbeef;
const KIND = 'timer';
/** Where the lease's DMA goes: [4 GiB, 8 GiB), clear of anything a client's own allocator might pick by default. */
const WINDOW = { base: 1n << 32n, size: 1n << 32n };

const WHOLE: Isolation = {
  level: 'enforced',
  reason: 'one client at a time leases the whole device; the timer is disarmed and BAR1 zeroed in between',
};

interface Bar {
  index: number;
  size: bigint;
  mmap: boolean;
  type: BarType;
}

export class ServerSampleDriver extends EventEmitter implements Driver {
  readonly name = 'libvfio-user-server';
  readonly #dev: Device;
  #bar0: Bar | null = null;
  #bar1: Bar | null = null;
  #leased = false;

  constructor(dev: Device) {
    super();
    this.#dev = dev;
  }

  kinds(): string[] {
    return [KIND];
  }

  /** Reads the two BARs and checks them against what the sample has; anything else is not this device. */
  async boot(): Promise<void> {
    this.#leased = false;
    const types = await readBarTypes(this.#dev);
    const bar = async (index: number): Promise<Bar> => {
      const r = await this.#dev.region(index);
      return {
        index,
        size: r.size,
        mmap: (r.flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0,
        type: barTypeAt(types, index),
      };
    };
    const bar0 = await bar(VFIO_PCI_BAR0_REGION_INDEX);
    const bar1 = await bar(VFIO_PCI_BAR1_REGION_INDEX);
    if (bar0.size !== 8n)
      throw new VfioError('ENODEV', `BAR0 is ${bar0.size} bytes, not the sample's one time_t (8)`);
    if (bar1.size === 0n) throw new VfioError('ENODEV', 'the device has no BAR1');
    if ((await this.#dev.irqCount(VFIO_PCI_INTX_IRQ_INDEX)) < 1)
      throw new VfioError('ENODEV', 'the device has no INTx');
    this.#bar0 = bar0;
    this.#bar1 = bar1;
    await this.#disarm();
  }

  /** Whole BARs: nothing to split, nothing that a page size could break. */
  validateLayout(): void {}

  acquire(req: LeaseRequest): LeaseResources {
    if (req.kind !== KIND)
      throw new VfioError('EINVAL', `this device offers lease kind '${KIND}', not '${req.kind}'`);
    const bar0 = this.#bar0;
    const bar1 = this.#bar1;
    if (!bar0 || !bar1) throw new VfioError('ENODEV', 'the device is not booted');
    if (this.#leased) throw new VfioError('ENOSPC', 'the device is leased whole to another client');
    this.#leased = true;
    return {
      kind: KIND,
      queue: null,
      slices: [bar0, bar1].map((b) => ({
        region: b.index,
        offset: 0n,
        size: b.size,
        leaseRegion: b.index,
        leaseOffset: 0n,
        unit: b.size,
        // BAR0 is a register the sample handles per access: the broker forwards each one.
        mappable: b.index === VFIO_PCI_BAR1_REGION_INDEX && b.mmap,
        isolation: WHOLE,
      })),
      window: WINDOW,
      // The sample DMAs to the addresses the client mapped: no translation.
      view: identityView(WINDOW, 'the sample has no address translation'),
      vectors: [0],
      irqIndex: VFIO_PCI_INTX_IRQ_INDEX,
      devmem: null,
      isolation: {
        regions: WHOLE,
        iovaWindow: { level: 'enforced', reason: 'the broker maps all DMA after a window check' },
        interrupts: { level: 'enforced', reason: 'the INTx eventfd is wired to this lease only' },
      },
    };
  }

  async activate(): Promise<void> {}

  /** Stop the lease's work: an armed timer would DMA into memory the client no longer has. */
  async quiesce(): Promise<void> {
    await this.#disarm();
  }

  async resetLease(): Promise<void> {
    await this.#disarm();
    await this.#dev.reset();
  }

  /** The next client must find BAR1 as a fresh device has it: zeroed. */
  async scrub(): Promise<void> {
    const bar1 = this.#bar1;
    if (bar1) await this.#dev.write(bar1.index, 0, new Uint8Array(Number(bar1.size)));
  }

  async recover(): Promise<void> {
    await this.#dev.reset();
    await this.#disarm();
  }

  release(): void {
    this.#leased = false;
  }

  deviceLost(): void {
    this.#leased = false;
    this.#bar0 = null;
    this.#bar1 = null;
  }

  leaseConfigSpace(): Uint8Array {
    const ids = this.#dev.ids;
    const bars: Record<number, BarType> = {};
    for (const b of [this.#bar0, this.#bar1]) if (b) bars[b.index] = b.type;
    return leaseConfigSpaceOf(ids, bars);
  }

  /** BAR0 read: seconds since the last time_t written (negative while a timer is armed for the future). */
  async status(): Promise<Record<string, unknown>> {
    const since = await this.#dev.read64(VFIO_PCI_BAR0_REGION_INDEX, 0);
    return { driver: this.name, leased: this.#leased, secondsSinceLastArm: since.toString() };
  }

  close(): void {}

  /**
   * Disarm the timer: write now. A second boundary between reading the clock and the write makes "now" past
   * (EINVAL), so try again with the new now; three misses in a row would mean the device is not the sample.
   */
  async #disarm(): Promise<void> {
    let last: unknown;
    for (let i = 0; i < 3; i++) {
      try {
        await this.#dev.write64(VFIO_PCI_BAR0_REGION_INDEX, 0, BigInt(Math.floor(Date.now() / 1000)));
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EINVAL') throw err;
        last = err;
      }
    }
    throw new VfioError('EIO', `the timer did not disarm: ${(last as Error).message}`);
  }
}

export const driverFactory: DriverFactory = {
  name: 'libvfio-user-server',
  matches: (device) => device.ids.vendor === VENDOR && device.ids.device === DEVICE,
  create: (device) => new ServerSampleDriver(device),
};
