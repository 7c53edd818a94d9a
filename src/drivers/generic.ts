// The generic driver: for a device devlease has no knowledge of. It offers
// one lease kind, `device`: every BAR region whole, every MSI-X vector (or,
// on a device without MSI-X, its INTx line as the lease's vector 0), and
// one IOVA window, to one client at a time. Nothing is isolated inside the
// device, so every slice is reported `cooperative`, with the reason.
//
// Between leases the device is reset (VFIO_DEVICE_RESET): the only way to
// clear a device one knows nothing about. One with no reset method (QEMU's
// edu under vfio-pci, many integrated devices) is quarantined after its first
// lease, with the reason, unless `[generic] reuse_without_reset` leases it
// again as the last holder left it.
//
// Bus master is the broker's, as the rest of the lease's config space is
// virtual (session.ts): a grant sets it, so the lease's DMA and MSI/MSI-X
// messages reach memory (a real device does neither without it), and
// quiesce clears it before the reset, which stops both at once — also on a
// device with no reset method. A device whose config space takes no write
// (a vfio-user server that emulates none) is leased as it is.
//
// A broker with this driver can be upgraded live: its state is what it read
// at boot, whether the device is leased, and a quarantine.

import { EventEmitter } from 'node:events';
import type { Device } from '../device/device.js';
import { DevleaseError, VfioError } from '../errors.js';
import type { Fd } from '../sys/fd.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../vfio/uapi/pci-regs.js';
import {
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
} from '../vfio/uapi/vfio.js';
import { type BarType, barTypeAt, leaseConfigSpaceOf, readBarTypes } from './config-space.js';
import {
  type Driver,
  type DriverConfig,
  type DriverFactory,
  identityView,
  type LeaseRequest,
  type LeaseResources,
  type SliceSpec,
} from './driver.js';

const COOPERATIVE = {
  level: 'cooperative' as const,
  reason:
    'generic driver: the whole region is shared with the device owner; nothing inside the device separates clients',
};

/** Errors that say the device is gone, not that it refused a config access (vfio-user: the connection). */
const DEVICE_GONE = new Set(['ENODEV', 'ECONNRESET', 'EPIPE', 'ENOTCONN', 'ESHUTDOWN', 'ETIMEDOUT']);

const NO_RESET =
  'the device reports no reset method (VFIO_DEVICE_FLAGS_RESET clear: no FLR, PM or bus reset), so what a ' +
  'lease leaves in it cannot be cleared';

export class GenericDriver extends EventEmitter implements Driver {
  readonly name = 'generic';
  #bars: { index: number; size: bigint; mmap: boolean; type: BarType }[] = [];
  #vectors = 0;
  #leased = false;
  /** The device's irq index behind the lease's vectors: MSI-X, or INTx on a device without MSI-X. */
  #irqIndex = VFIO_PCI_MSIX_IRQ_INDEX;
  /** Why the device is leased no more (a lease ended on a device with no reset), or null. */
  #quarantined: string | null = null;
  /** Why bus master cannot be set (the device refused a command-register access), or null. */
  #noBusMaster: string | null = null;
  /** Set by a grant and not yet cleared (a grant that failed after activate() leaves it to release()). */
  #busMasterOn = false;

  constructor(
    private readonly dev: Device,
    private readonly config?: DriverConfig,
  ) {
    super();
  }

  get #reuseWithoutReset(): boolean {
    return this.config?.generic?.reuseWithoutReset ?? false;
  }

  kinds(): string[] {
    return ['device'];
  }

  async boot(): Promise<void> {
    this.#bars = [];
    // The lease's BARs mirror the device's own: I/O or memory, 64-bit, prefetchable.
    const types = await readBarTypes(this.dev);
    for (let i = 0; i < Math.min(this.dev.numRegions, VFIO_PCI_ROM_REGION_INDEX); i++) {
      const r = await this.dev.region(i);
      // A 64-bit BAR's upper register is no region of its own (VFIO reports size 0 for it).
      if (r.size > 0n && types[i]) {
        const mmap = (r.flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0;
        this.#bars.push({ index: i, size: r.size, mmap, type: barTypeAt(types, i) });
      }
    }
    this.#vectors = await this.dev.irqCount(VFIO_PCI_MSIX_IRQ_INDEX).catch(() => 0);
    this.#irqIndex = VFIO_PCI_MSIX_IRQ_INDEX;
    // Many small devices (libvfio-user's samples among them) have INTx only: without it their lease would
    // have no interrupt at all, and a device that raises INTx with no eventfd wired may fail (the server
    // sample exits).
    if (this.#vectors === 0 && (await this.dev.irqCount(VFIO_PCI_INTX_IRQ_INDEX).catch(() => 0)) > 0) {
      this.#vectors = 1;
      this.#irqIndex = VFIO_PCI_INTX_IRQ_INDEX;
    }
  }

  /** Whole regions go to one client at a time: there is nothing to split, so nothing to refuse. */
  validateLayout(): void {}

  acquire(req: LeaseRequest): LeaseResources {
    if (req.kind !== 'device')
      throw new VfioError('EINVAL', `the generic driver offers lease kind 'device', not '${req.kind}'`);
    if (this.#quarantined) throw new VfioError('EBUSY', `the device is quarantined: ${this.#quarantined}`);
    if (this.#leased) throw new VfioError('EBUSY', 'the device is leased whole to another client');
    this.#leased = true;
    const slices: SliceSpec[] = this.#bars.map((b) => ({
      region: b.index,
      offset: 0n,
      size: b.size,
      leaseRegion: b.index,
      leaseOffset: 0n,
      unit: b.size,
      mappable: b.mmap,
      isolation: COOPERATIVE,
    }));
    const range = this.dev.iovaRanges()[0];
    const base = 1n << 32n;
    const size = range && range.last >= base + (1n << 32n) - 1n ? 1n << 32n : 0n;
    return {
      kind: 'device',
      queue: null,
      slices,
      window: size ? { base, size } : null,
      view: identityView(size ? { base, size } : null, 'the generic driver knows no address translation'),
      vectors: Array.from({ length: this.#vectors }, (_, i) => i),
      irqIndex: this.#irqIndex,
      devmem: null,
      isolation: {
        regions:
          this.dev.resettable === false
            ? {
                ...COOPERATIVE,
                reason: `${COOPERATIVE.reason}; ${NO_RESET}: it comes as the last lease left it`,
              }
            : COOPERATIVE,
        iovaWindow: { level: 'enforced', reason: 'the broker maps all DMA after a window check' },
        interrupts: { level: 'enforced', reason: 'the client eventfds are wired to this lease only' },
      },
    };
  }

  /** Bus master on: the lease's DMA and MSI/MSI-X messages are memory writes of the device. */
  async activate(): Promise<void> {
    await this.#busMaster(true);
  }
  /**
   * Bus master off, then a reset, stop whatever the device was doing for the lease before its IOVA window is
   * unmapped. Without a reset method bus master off is all there is: the device is leased no more (the next
   * acquire says why), or with reuse_without_reset it goes on as it is from the next grant.
   */
  async quiesce(): Promise<void> {
    await this.#busMaster(false).catch(() => undefined);
    if (this.dev.resettable === false) return this.#noReset();
    await this.dev.reset().catch(() => undefined);
  }

  /** PCI_COMMAND's bus master bit set or cleared (no write when it is so already); the rest kept. */
  async #busMaster(on: boolean): Promise<void> {
    if (this.#noBusMaster) return;
    this.#busMasterOn = on;
    try {
      const cmd = await this.dev.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
      const v = cmd[0]! | (cmd[1]! << 8);
      const want = on ? v | PCI_COMMAND_MASTER : v & ~PCI_COMMAND_MASTER;
      if (want !== v)
        await this.dev.write(
          VFIO_PCI_CONFIG_REGION_INDEX,
          PCI_COMMAND,
          new Uint8Array([want & 0xff, want >> 8]),
        );
    } catch (err) {
      // A device that takes no config write (a vfio-user server emulating none, whatever errno it answers) has
      // no bus master to set: it is leased as it is, and `devlease status` says so. A device gone is no refusal.
      if (!(err instanceof DevleaseError) || DEVICE_GONE.has(err.code)) throw err;
      this.#noBusMaster = `the device refused its command register (${err.code}: ${err.message})`;
    }
  }
  async resetLease(): Promise<void> {
    await this.dev.reset();
  }
  /**
   * Nothing but a device reset can clear a device we know nothing about. Without one, quiesce() has decided
   * already (quarantined, or leased again as it is).
   */
  async scrub(): Promise<void> {
    if (this.dev.resettable === false) return;
    await this.dev.reset();
  }

  /** A lease ended on a device with no reset method: quarantine it (this throws), unless configured not to. */
  #noReset(): void {
    if (this.#reuseWithoutReset) return;
    this.#quarantined = `${NO_RESET}; it is leased no more until the broker restarts ([generic] reuse_without_reset = true leases it again as the last lease left it)`;
    throw new VfioError('ENOTSUP', this.#quarantined);
  }
  async recover(): Promise<void> {
    await this.dev.reset();
  }
  release(): void {
    this.#leased = false;
    // A grant that failed after activate(): no lease ends through quiesce(), so bus master is cleared here. The
    // device's calls are served in order, so a next grant's activate() still finds it set afterwards.
    if (this.#busMasterOn) void this.#busMaster(false).catch(() => undefined);
  }
  /** The lease died with the device; boot() rereads the regions of whatever comes back. */
  deviceLost(): void {
    this.#leased = false;
    this.#bars = [];
    this.#vectors = 0;
  }

  leaseConfigSpace(): Uint8Array {
    const ids = this.dev.ids;
    const bars: Record<number, BarType> = {};
    for (const b of this.#bars) bars[b.index] = b.type;
    return leaseConfigSpaceOf(ids, bars);
  }

  async status(): Promise<Record<string, unknown>> {
    return {
      driver: 'generic',
      leased: this.#leased,
      reset:
        this.dev.resettable !== false
          ? 'VFIO_DEVICE_RESET between leases'
          : this.#reuseWithoutReset
            ? 'none: leased again as the last lease left it ([generic] reuse_without_reset)'
            : 'none: quarantined after its first lease ([generic] reuse_without_reset = false)',
      ...(this.#quarantined ? { quarantined: this.#quarantined } : {}),
      busMaster: this.#noBusMaster ?? 'set at each grant, cleared at each lease end',
      bars: this.#bars.map((b) => ({ ...b, size: b.size.toString() })),
      configRegion: VFIO_PCI_CONFIG_REGION_INDEX,
    };
  }

  close(): void {}

  // ---- broker upgrade (src/broker/handover): see Driver.hold/handover/adopt ----
  // The driver has no timer or watcher of its own (the lease's vectors go straight to the client's eventfds), so
  // hold/unhold have nothing to stop. The state is what boot() read, whether it is leased, and a quarantine.

  async hold(): Promise<void> {}

  unhold(): void {}

  handover(): { state: GenericHandoverState; fds: Fd[] } {
    return {
      state: {
        bars: this.#bars.map((b) => ({ ...b, size: b.size.toString() })),
        vectors: this.#vectors,
        irqIndex: this.#irqIndex,
        leased: this.#leased,
        quarantined: this.#quarantined,
      },
      fds: [],
    };
  }

  /**
   * Take the device as the old broker left it: read what boot() reads (it changes nothing in the device) and
   * check it agrees with what the old broker had, then carry on its lease and quarantine.
   */
  async adopt(
    state: unknown,
    _fds: Fd[],
    leased: LeaseResources[],
    parked: LeaseResources[] = [],
  ): Promise<void> {
    const s = state as GenericHandoverState;
    if (!s || !Array.isArray(s.bars)) throw new Error('generic: the handed-over state has no BARs');
    await this.boot();
    const now = this.handover().state;
    for (const key of ['bars', 'vectors', 'irqIndex'] as const)
      if (JSON.stringify(now[key]) !== JSON.stringify(s[key]))
        throw new Error(
          `generic: the device's ${key} read ${JSON.stringify(now[key])}, the old broker had ${JSON.stringify(s[key])}`,
        );
    const held = leased.length + parked.length > 0;
    if (held !== s.leased)
      throw new Error(
        held
          ? 'generic: a lease is handed over but the driver had the device free'
          : 'generic: the driver had the device leased but no lease is handed over',
      );
    this.#leased = s.leased;
    this.#quarantined = s.quarantined;
  }
}

interface GenericHandoverState {
  bars: { index: number; size: string; mmap: boolean; type: BarType }[];
  vectors: number;
  irqIndex: number;
  leased: boolean;
  quarantined: string | null;
}

export const genericDriverFactory: DriverFactory = {
  name: 'generic',
  matches: () => true,
  create: (device, config) => new GenericDriver(device, config),
};
