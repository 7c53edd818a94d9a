// The SA-1 driver: boots the accelerator (firmware, enable, fault vector),
// offers the `queue` lease kind, and programs each queue's IOVA and
// device-memory windows before enabling it — the device-side half of the
// isolation (the IOMMU is the other half).

import { EventEmitter } from 'node:events';
import type { Device } from '../../device/device.js';
import { VfioError } from '../../errors.js';
import {
  BAR0,
  BAR2,
  BAR4,
  CONTROL,
  FAULT_LOG_ENTRIES,
  FAULT_RECORD_SIZE,
  FW_STATUS,
  Q,
  Q_CTRL,
  Q_STATUS,
  qcfg,
  REG,
  SA1_DEVICE,
  SA1_ID_VALUE,
  SA1_VENDOR,
  STATUS,
  STATUS_NAME,
} from '../../hw/sa1/regs.js';
import type { Fd } from '../../sys/fd.js';
import { EventFd } from '../../sys/index.js';
import {
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../../vfio/uapi/vfio.js';
import { type BarType, barTypeAt, buildLeaseConfigSpace, readBarTypes } from '../config-space.js';
import {
  type DeviceFault,
  type Driver,
  type DriverConfig,
  type DriverFactory,
  identityView,
  type LeaseRequest,
  type LeaseResources,
} from '../driver.js';
import { pollUntil } from '../poll.js';
import { bootFirmware } from './boot.js';
import { Granules, WindowSlots } from './pools.js';

/** Lease region index of the first device-memory granule (after the devlease info region, 9). */
export const DEVMEM_LEASE_REGION0 = 10;

const PCI_COMMAND = 0x04;
const PCI_COMMAND_MEMORY = 1 << 1;
const PCI_COMMAND_MASTER = 1 << 2;

/** Bound on a whole-device reset (CONTROL.RESET to read 0). */
export const DEVICE_RESET_TIMEOUT_MS = 1000;

export interface Sa1Geometry {
  numQueues: number;
  queueStride: number;
  devmemSize: bigint;
  granule: number;
}

/** Bound on HEARTBEAT moving once a recovery brought the device back (it advances every 10 ms). */
const HEARTBEAT_ALIVE_TIMEOUT_MS = 1000;

/** What an upgrade carries of the driver (JSON; the fault and ERR eventfds travel as fds). */
interface Sa1HandoverState {
  geometry: Omit<Sa1Geometry, 'devmemSize'> & { devmemSize: string };
  bar2Type: BarType | null;
  stuckQueues: number[];
  cleanQueues: number[];
  faultsSeen: number;
}

export class Sa1Driver extends EventEmitter implements Driver {
  readonly name = 'sa1';
  readonly #dev: Device;
  readonly #cfg: DriverConfig;
  #geo: Sa1Geometry | null = null;
  /** The queue-page BAR's type, mirrored in lease config spaces. */
  #bar2Type: BarType | null = null;
  #freeQueues: number[] = [];
  /**
   * Queues whose reset did not finish: never leased again by this driver, whatever the broker does with the
   * lease that held them (a grant whose activation timed out gives its queue back with release()).
   */
  readonly #stuckQueues = new Set<number>();
  /**
   * Queues reset by this driver and not enabled since (reclaim's quiesce, scrub): a grant needs no reset
   * of its own, so the reset is paid when the previous holder is reclaimed, not when the next one asks.
   */
  readonly #cleanQueues = new Set<number>();
  #windows: WindowSlots | null = null;
  #granules: Granules | null = null;
  #faultFd: EventFd | null = null;
  #errFd: EventFd | null = null;
  #faultsSeen = 0;
  #heartbeat: { timer: NodeJS.Timeout; last: number; stale: number } | null = null;
  #closed = false;

  constructor(dev: Device, cfg: DriverConfig) {
    super();
    this.#dev = dev;
    this.#cfg = cfg;
  }

  get geometry(): Sa1Geometry {
    if (!this.#geo) throw new Error('sa1: device not booted');
    return this.#geo;
  }

  kinds(): string[] {
    return ['queue'];
  }

  async boot(): Promise<void> {
    const d = this.#dev;
    const id = await d.read32(BAR0, REG.ID);
    if (id !== SA1_ID_VALUE)
      throw new Error(`sa1: ID register reads 0x${id.toString(16)}, expected 0x${SA1_ID_VALUE.toString(16)}`);
    this.#geo = {
      numQueues: await d.read32(BAR0, REG.NUM_QUEUES),
      queueStride: await d.read32(BAR0, REG.QUEUE_STRIDE),
      devmemSize: BigInt(await d.read32(BAR0, REG.DEVMEM_SIZE_MB)) << 20n,
      granule: await d.read32(BAR0, REG.DEVMEM_GRANULE),
    };
    const g = this.#geo;
    this.validateLayout();
    this.#bar2Type = barTypeAt(await readBarTypes(d), BAR2);

    // A restarted broker finds the device in whatever state the last one left:
    // a hung device is reset; running firmware is kept (the device outlives its driver).
    let status = await d.read32(BAR0, REG.STATUS);
    if (status & STATUS.HUNG) {
      await this.#resetDevice();
      status = await d.read32(BAR0, REG.STATUS);
    }
    // Stop every queue a previous owner may have left enabled (or in reset) before leasing them again; one
    // whose reset does not finish stays out of the pool.
    this.#stuckQueues.clear();
    this.#cleanQueues.clear();
    for (let q = 0; q < g.numQueues; q++) {
      if (!((await d.read32(BAR0, qcfg(q, Q.CTRL))) & (Q_CTRL.ENABLE | Q_CTRL.RESET))) continue;
      await this.#resetQueue(q).catch((err: { code?: string }) => {
        if (err.code !== 'ETIMEDOUT') throw err;
      });
    }
    // Clients of a previous broker may still hold slices of this device: revoke them all, so nothing
    // handed out before this boot can reach a queue page or granule we are about to lease again.
    if (this.#cfg.lifetime.revoke && d.capabilities.revocableSlices) {
      await this.#revokeAll(BAR2, g.numQueues, BigInt(g.queueStride));
      await this.#revokeAll(BAR4, Number(g.devmemSize / BigInt(g.granule)), BigInt(g.granule));
    }
    await this.#enableBusMaster();
    if ((await d.read32(BAR0, REG.FW_STATUS)) !== FW_STATUS.RUNNING) {
      await bootFirmware(d, this.#cfg.sa1.firmware);
    }
    await d.write32(BAR0, REG.CONTROL, CONTROL.ENABLE);

    this.#freeQueues = Array.from({ length: g.numQueues }, (_, i) => i).filter(
      (q) => !this.#stuckQueues.has(q),
    );
    this.#windows = new WindowSlots(this.#cfg.sa1.windowSize, g.numQueues, d.iovaRanges());
    this.#granules = new Granules(g.devmemSize, BigInt(g.granule));
    await this.#armInterrupts();
    this.#faultsSeen = await d.read32(BAR0, REG.FAULT_HEAD);
    await d.write32(BAR0, REG.FAULT_ACK, this.#faultsSeen);
    this.#startHeartbeat();
  }

  validateLayout(): void {
    const g = this.geometry;
    const page = this.#cfg.layout.pageSize;
    const problems: string[] = [];
    if (g.queueStride < page || g.queueStride % page !== 0) {
      problems.push(
        `region 2 (BAR2): offset 0, stride ${g.queueStride} is below or not a multiple of the ${page}-byte page`,
      );
    }
    if (g.granule < page || g.granule % page !== 0) {
      problems.push(
        `region 4 (BAR4): offset 0, stride ${g.granule} is below or not a multiple of the ${page}-byte page`,
      );
    }
    if (problems.length && !this.#cfg.layout.allowCooperative) {
      throw new Error(
        `sa1: layout cannot isolate clients: ${problems.join('; ')} (set layout.allow_cooperative to lease anyway)`,
      );
    }
    this.#cooperativeLayout = problems.length > 0;
  }
  #cooperativeLayout = false;

  capacity(kind: string): number {
    return kind === 'queue' && this.#geo ? this.#geo.numQueues : 0;
  }

  acquire(req: LeaseRequest): LeaseResources {
    const g = this.geometry;
    if (req.kind !== 'queue')
      throw new VfioError('EINVAL', `sa1 offers lease kind 'queue', not '${req.kind}'`);
    const granules = req.devmemGranules ?? 0;
    if (!Number.isInteger(granules) || granules < 0 || granules > this.#cfg.sa1.maxDevmemGranules) {
      throw new VfioError(
        'EINVAL',
        `devmemGranules must be 0..${this.#cfg.sa1.maxDevmemGranules}, got ${String(granules)}`,
      );
    }
    const q = this.#freeQueues.shift();
    if (q === undefined) {
      const stuck = this.#stuckQueues.size
        ? ` or quarantined (${this.#stuckQueues.size} whose reset did not finish)`
        : '';
      throw new VfioError('ENOSPC', `all ${g.numQueues} queues are leased${stuck}`);
    }
    const window = this.#windows!.take(q);
    const devmem = granules ? this.#granules!.take(granules) : null;
    if (granules && !devmem) {
      this.#freeQueues.unshift(q);
      throw new VfioError('ENOSPC', `no ${granules} contiguous free device-memory granules`);
    }
    const sliceIsolation = this.#cooperativeLayout
      ? {
          level: 'cooperative' as const,
          reason: 'the layout puts more than one lease in a page (layout.allow_cooperative)',
        }
      : this.#dev.capabilities.revocableSlices
        ? { level: 'enforced' as const, reason: 'own slice fd from the device, revocable' }
        : {
            level: 'enforced' as const,
            reason: 'own slice fd from the device; not revocable: reuse waits for observed release',
          };
    const stride = BigInt(g.queueStride);
    const slices: LeaseResources['slices'] = [
      {
        region: BAR2,
        offset: BigInt(q) * stride,
        size: stride,
        leaseRegion: BAR2,
        leaseOffset: 0n,
        unit: stride,
        isolation: sliceIsolation,
      },
    ];
    // Each device-memory granule is its own lease region (one slice fd each), after the info region (9).
    for (let i = 0; devmem && i < granules; i++) {
      const unit = BigInt(g.granule);
      slices.push({
        region: BAR4,
        offset: devmem.offset + BigInt(i) * unit,
        size: unit,
        leaseRegion: DEVMEM_LEASE_REGION0 + i,
        leaseOffset: 0n,
        unit,
        isolation: sliceIsolation,
      });
    }
    return {
      kind: 'queue',
      queue: q,
      slices,
      window,
      view:
        this.#cfg.sa1.iovaView === 'translated'
          ? {
              mode: 'translated',
              base: 0n,
              size: window.size,
              reason: 'sa1.iova_view: the queue translates by Q_XLAT (datasheet rev 2 §2.2)',
            }
          : identityView(window, 'sa1.iova_view = "identity": the client uses the device IOVAs')!,
      vectors: [q],
      devmem,
      isolation: {
        queuePage: sliceIsolation,
        ...(devmem ? { devmem: sliceIsolation } : {}),
        iovaWindow: {
          level: 'enforced',
          reason: 'the broker maps all DMA after a window check; the device checks Q_WIN too',
        },
        interrupts: { level: 'enforced', reason: 'the client eventfd is wired to its own vector only' },
      },
    };
  }

  async activate(res: LeaseResources): Promise<void> {
    const d = this.#dev;
    const q = res.queue!;
    // A clean queue: indexes zero, error cleared (reclaim left it so, or reset it now).
    if (!this.#cleanQueues.delete(q)) await this.#resetQueue(q);
    // The writes go out together (the device serves one connection's requests in order), so the grant pays
    // one device round trip instead of eight. ENABLE is last on the wire; should any write before it fail, the
    // queue is disabled again and left out of the clean set, so the next grant resets it.
    // The window is the one the client sees (its view), and Q_XLAT takes the view to the lease's device range.
    const view = res.view!;
    const writes = [
      d.write64(BAR0, qcfg(q, Q.WIN_BASE), view.base),
      d.write64(BAR0, qcfg(q, Q.WIN_SIZE), view.size),
      d.write64(BAR0, qcfg(q, Q.XLAT), BigInt.asUintN(64, res.window!.base - view.base)),
      d.write32(BAR0, qcfg(q, Q.MEM_BASE), Number(res.devmem?.offset ?? 0n)),
      d.write32(BAR0, qcfg(q, Q.MEM_SIZE), Number(res.devmem?.size ?? 0n)),
      d.write32(BAR0, qcfg(q, Q.VECTOR), res.vectors[0]!),
      d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.ENABLE),
    ];
    const results = await Promise.allSettled(writes);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await d.write32(BAR0, qcfg(q, Q.CTRL), 0).catch(() => undefined);
      throw failed.reason;
    }
  }

  async quiesce(res: LeaseResources): Promise<void> {
    const q = res.queue!;
    const d = this.#dev;
    this.#cleanQueues.delete(q);
    // Disabling aborts in-flight descriptors (they complete ABORTED); wait for IDLE, then reset
    // so no ring state survives into the next lease. The first status read goes out with the write.
    await Promise.all([
      d.write32(BAR0, qcfg(q, Q.CTRL), 0),
      pollUntil({
        what: `sa1: queue ${q} quiesce (Q_STATUS.IDLE)`,
        read: () => d.read32(BAR0, qcfg(q, Q.STATUS)),
        done: (st) => (st & Q_STATUS.IDLE) !== 0,
        timeoutMs: this.#cfg.lifetime.quiesceTimeoutMs,
      }),
    ]);
    await this.#resetQueue(q);
  }

  async prepare(res: LeaseResources): Promise<void> {
    // Called after the broker revoked the lease's slices, and "a revoked queue page's queue is reset"
    // (datasheet rev 2, section 8): the device reset the queue once its last holder could no longer write
    // the page, so nothing it wrote there (ring bases, a doorbell) reaches the next lease, which is granted
    // without a reset of its own. No device command is needed.
    this.#cleanQueues.add(res.queue!);
  }

  async resetLease(res: LeaseResources): Promise<void> {
    this.#cleanQueues.delete(res.queue!);
    await this.#resetQueue(res.queue!);
    await this.#dev.write32(BAR0, qcfg(res.queue!, Q.CTRL), Q_CTRL.ENABLE);
  }

  async scrub(res: LeaseResources): Promise<void> {
    // A queue reset zeroes the whole queue page (ring registers and the reserved rest).
    this.#cleanQueues.delete(res.queue!);
    await this.#resetQueue(res.queue!);
    this.#cleanQueues.add(res.queue!);
    if (res.devmem) {
      const chunk = new Uint8Array(65536); // at most max_data_xfer_size per REGION_WRITE
      for (let off = 0n; off < res.devmem.size; off += BigInt(chunk.byteLength)) {
        await this.#dev.write(BAR4, res.devmem.offset + off, chunk);
      }
    }
  }

  release(res: LeaseResources): void {
    const q = res.queue!;
    if (res.devmem) this.#granules?.give(res.devmem); // none after deviceLost(): the next boot makes new pools
    if (!this.#freeQueues.includes(q) && !this.#stuckQueues.has(q)) {
      this.#freeQueues.push(q);
      this.#freeQueues.sort((a, b) => a - b);
    }
  }

  leaseConfigSpace(_res: LeaseResources): Uint8Array {
    if (!this.#bar2Type) throw new Error('sa1: device not booted');
    const bars: Record<number, BarType> = { [BAR2]: this.#bar2Type };
    return buildLeaseConfigSpace({
      vendor: SA1_VENDOR,
      device: SA1_DEVICE,
      classCode: 0x120000,
      revision: 1,
      subsystemVendor: SA1_VENDOR,
      subsystem: 1,
      bars,
    });
  }

  async status(): Promise<Record<string, unknown>> {
    const d = this.#dev;
    const st = await d.read32(BAR0, REG.STATUS);
    return {
      driver: 'sa1',
      status: Object.entries(STATUS)
        .filter(([, bit]) => st & bit)
        .map(([n]) => n),
      fwStatus: await d.read32(BAR0, REG.FW_STATUS),
      fwVersion: await d.read32(BAR0, REG.FW_VERSION),
      heartbeat: await d.read32(BAR0, REG.HEARTBEAT),
      faultHead: await d.read32(BAR0, REG.FAULT_HEAD),
      geometry: { ...this.geometry, devmemSize: this.geometry.devmemSize.toString() },
      freeQueues: this.#freeQueues.length,
      quarantinedQueues: [...this.#stuckQueues],
    };
  }

  /** Whole-device recovery after a hang: reset, reload firmware, enable. Leases must already be reclaimed. */
  async recover(): Promise<void> {
    this.#stopHeartbeat();
    this.#cleanQueues.clear();
    await this.#resetDevice();
    await this.#enableBusMaster();
    await bootFirmware(this.#dev, this.#cfg.sa1.firmware);
    await this.#dev.write32(BAR0, REG.CONTROL, CONTROL.ENABLE);
    this.#faultsSeen = await this.#dev.read32(BAR0, REG.FAULT_HEAD);
    // A hang during the attempt (its ERR joined the recovery in progress) must fail the attempt, not be
    // forgotten: the device is back only if it is not hung and its heartbeat moves.
    await this.#checkAlive();
    this.#startHeartbeat();
  }

  /** Throws unless STATUS.HUNG is clear and HEARTBEAT advances (it does at least every 10 ms, §2.1). */
  async #checkAlive(): Promise<void> {
    const d = this.#dev;
    if ((await d.read32(BAR0, REG.STATUS)) & STATUS.HUNG)
      throw new Error('sa1: the device hung again during recovery (STATUS.HUNG)');
    const first = await d.read32(BAR0, REG.HEARTBEAT);
    await pollUntil({
      what: 'sa1: HEARTBEAT to advance after recovery',
      read: () => d.read32(BAR0, REG.HEARTBEAT),
      done: (v) => v !== first,
      timeoutMs: HEARTBEAT_ALIVE_TIMEOUT_MS,
    });
  }

  // ---- broker upgrade (src/broker/handover): see Driver.hold/handover/adopt ----

  async hold(): Promise<void> {
    this.#stopHeartbeat();
    this.#faultFd?.stopWatching();
    this.#errFd?.stopWatching();
    await this.#draining;
  }

  unhold(): void {
    this.#watchInterrupts();
    this.#startHeartbeat();
  }

  handover(): { state: Sa1HandoverState; fds: Fd[] } {
    if (!this.#geo || !this.#faultFd || !this.#errFd)
      throw new Error('sa1: not booted: nothing to hand over');
    return {
      state: {
        geometry: { ...this.#geo, devmemSize: this.#geo.devmemSize.toString() },
        bar2Type: this.#bar2Type,
        stuckQueues: [...this.#stuckQueues],
        cleanQueues: [...this.#cleanQueues],
        faultsSeen: this.#faultsSeen,
      },
      fds: [this.#faultFd.fd, this.#errFd.fd],
    };
  }

  async adopt(state: unknown, fds: Fd[], leased: LeaseResources[]): Promise<void> {
    const s = state as Sa1HandoverState;
    const [faultFd, errFd] = fds;
    if (!faultFd || !errFd || !s?.geometry) throw new Error('sa1: the handed-over state lacks its eventfds');
    this.#geo = { ...s.geometry, devmemSize: BigInt(s.geometry.devmemSize) };
    this.validateLayout();
    this.#bar2Type = s.bar2Type;
    this.#stuckQueues.clear();
    for (const q of s.stuckQueues) this.#stuckQueues.add(q);
    this.#cleanQueues.clear();
    for (const q of s.cleanQueues) this.#cleanQueues.add(q);
    this.#faultsSeen = s.faultsSeen;
    const g = this.#geo;
    const held = new Set(leased.map((r) => r.queue));
    this.#freeQueues = Array.from({ length: g.numQueues }, (_, i) => i).filter(
      (q) => !this.#stuckQueues.has(q) && !held.has(q),
    );
    this.#windows = new WindowSlots(this.#cfg.sa1.windowSize, g.numQueues, this.#dev.iovaRanges());
    this.#granules = new Granules(g.devmemSize, BigInt(g.granule));
    for (const r of leased) if (r.devmem) this.#granules.reserve(r.devmem);
    this.#faultFd = EventFd.adopt(faultFd);
    this.#errFd = EventFd.adopt(errFd);
    // The device must still be as the old broker left it: running, and every leased queue enabled.
    const status = await this.#dev.read32(BAR0, REG.STATUS);
    if (status & STATUS.HUNG) throw new Error('sa1: the device reports HUNG: not taking it over as it is');
    for (const r of leased) {
      const ctrl = await this.#dev.read32(BAR0, qcfg(r.queue!, Q.CTRL));
      if (!(ctrl & Q_CTRL.ENABLE))
        throw new Error(
          `sa1: queue ${r.queue} is leased but not enabled on the device (Q_CTRL 0x${ctrl.toString(16)})`,
        );
    }
    this.unhold();
  }

  deviceLost(): void {
    this.#stopHeartbeat();
    this.#cleanQueues.clear();
    this.#closeInterrupts();
    this.#freeQueues = [];
    this.#windows = null;
    this.#granules = null;
  }

  close(): void {
    this.#closed = true;
    this.#stopHeartbeat();
    this.#closeInterrupts();
  }

  #closeInterrupts(): void {
    this.#faultFd?.close();
    this.#errFd?.close();
    this.#faultFd = this.#errFd = null;
  }

  async #revokeAll(region: number, units: number, unit: bigint): Promise<void> {
    const PER_CALL = 16; // one reply carries at most max_msg_fds slice fds
    for (let first = 0; first < units; first += PER_CALL) {
      const ranges = [];
      for (let i = first; i < Math.min(units, first + PER_CALL); i++)
        ranges.push({ offset: BigInt(i) * unit, length: unit });
      const fds = await this.#dev.sliceFds(region, ranges);
      try {
        for (const fd of fds) await this.#dev.revokeSlice(fd);
      } finally {
        for (const fd of fds) fd.close();
      }
    }
  }

  /** Memory space and bus master on: the device refuses DMA (firmware fetch included) without bus master. */
  async #enableBusMaster(): Promise<void> {
    const cmd = await this.#dev.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
    const v =
      new DataView(cmd.buffer, cmd.byteOffset, 2).getUint16(0, true) |
      PCI_COMMAND_MEMORY |
      PCI_COMMAND_MASTER;
    const out = new Uint8Array(2);
    new DataView(out.buffer).setUint16(0, v, true);
    await this.#dev.write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, out);
  }

  /** CONTROL.RESET until it reads 0; ETIMEDOUT past DEVICE_RESET_TIMEOUT_MS. */
  async #resetDevice(): Promise<void> {
    // No ERR follows: a reset the owner asked for is no error (datasheet rev 2, 2.4).
    await this.#dev.write32(BAR0, REG.CONTROL, CONTROL.RESET);
    await pollUntil({
      what: 'sa1: device reset (CONTROL.RESET)',
      read: () => this.#dev.read32(BAR0, REG.CONTROL),
      done: (v) => (v & CONTROL.RESET) === 0,
      timeoutMs: DEVICE_RESET_TIMEOUT_MS,
    });
  }

  /**
   * Q_CTRL.RESET until it reads 0, bounded by lifetime.quiesce_timeout_ms. On ETIMEDOUT the queue is
   * quarantined: out of the pool for the life of this driver (as the broker's quarantined leases are); the
   * next boot checks it again.
   */
  async #resetQueue(q: number): Promise<void> {
    const d = this.#dev;
    try {
      // The first read goes out with the write (in order on the wire): one round trip when the reset is quick.
      await Promise.all([
        d.write32(BAR0, qcfg(q, Q.CTRL), Q_CTRL.RESET),
        pollUntil({
          what: `sa1: queue ${q} reset (Q_CTRL.RESET)`,
          read: () => d.read32(BAR0, qcfg(q, Q.CTRL)),
          done: (v) => (v & Q_CTRL.RESET) === 0,
          timeoutMs: this.#cfg.lifetime.quiesceTimeoutMs,
        }),
      ]);
    } catch (err) {
      if ((err as { code?: string }).code === 'ETIMEDOUT') {
        this.#stuckQueues.add(q);
        this.#freeQueues = this.#freeQueues.filter((f) => f !== q);
      }
      throw err;
    }
  }

  async #armInterrupts(): Promise<void> {
    const g = this.geometry;
    this.#faultFd = new EventFd();
    this.#errFd = new EventFd();
    this.#watchInterrupts();
    await this.#dev.setIrqs(VFIO_PCI_MSIX_IRQ_INDEX, g.numQueues, [this.#faultFd.fd]);
    await this.#dev.setIrqs(VFIO_PCI_ERR_IRQ_INDEX, 0, [this.#errFd.fd]);
  }

  #watchInterrupts(): void {
    this.#faultFd?.onReadable(() => this.#scheduleDrain());
    this.#errFd?.onReadable(() => void this.#onErr().catch((err) => this.emit('error', err)));
  }

  /** ERR: the device hung, or was reset without the driver asking (its own resets raise none). */
  async #onErr(): Promise<void> {
    const status = await this.#dev.read32(BAR0, REG.STATUS);
    if (status & STATUS.HUNG) this.emit('hang', 'the device raised ERR and reports HUNG');
    else this.emit('device-reset', 'the device raised ERR: it was reset');
  }

  /** One drain at a time (two would both start from #faultsSeen and report faults twice); rerun if more came. */
  #draining: Promise<void> | null = null;
  #drainAgain = false;
  #scheduleDrain(): void {
    if (this.#draining) {
      this.#drainAgain = true;
      return;
    }
    this.#draining = (async () => {
      do {
        this.#drainAgain = false;
        await this.#drainFaults().catch((err) => this.emit('error', err));
      } while (this.#drainAgain);
    })().finally(() => {
      this.#draining = null;
    });
  }

  async #drainFaults(): Promise<void> {
    const d = this.#dev;
    const head = await d.read32(BAR0, REG.FAULT_HEAD);
    // The log holds the last 16 records; older ones are lost if we fell that far behind.
    let from = this.#faultsSeen;
    if ((head - from) >>> 0 > FAULT_LOG_ENTRIES) from = (head - FAULT_LOG_ENTRIES) >>> 0;
    for (let n = from; n !== head; n = (n + 1) >>> 0) {
      // BAR0 takes 4- or 8-byte accesses only: a record is two 64-bit reads.
      const at = REG.FAULT_LOG + (n % FAULT_LOG_ENTRIES) * FAULT_RECORD_SIZE;
      const head = await d.read64(BAR0, at);
      const address = await d.read64(BAR0, at + 8);
      const queue = Number(head & 0xffffn);
      const code = Number((head >> 16n) & 0xffffn);
      const fault: DeviceFault = {
        queue: queue === 0xffff ? null : queue,
        code,
        name: STATUS_NAME[code] ?? (code === 16 ? 'FW_FAULT' : code === 17 ? 'HANG' : `CODE_${code}`),
        address,
      };
      this.emit('fault', fault);
    }
    this.#faultsSeen = head;
    await d.write32(BAR0, REG.FAULT_ACK, head);
  }

  /**
   * Every period, read HEARTBEAT. It advances at least every 10 ms: two whole periods without a change is a
   * hang. A read that fails counts as a period without a change (a device that answers with errors is no
   * healthy device). A read still unanswered after sa1.response_timeout_ms is an unresponsive device (a
   * frozen server): reported at once, without waiting for the request's own 5 s deadline.
   */
  #startHeartbeat(): void {
    const period = this.#cfg.sa1.heartbeatMs;
    const limit = this.#cfg.sa1.responseTimeoutMs;
    const hb = { timer: setInterval(() => void tick(), period), last: -1, stale: 0 };
    hb.timer.unref();
    this.#heartbeat = hb;
    let sentAt: number | null = null;
    const stop = (event: 'hang' | 'unresponsive', why: string) => {
      if (this.#heartbeat !== hb) return; // stopped meanwhile (recovery, close): not this tick's news
      this.#stopHeartbeat();
      this.emit(event, why);
    };
    const tick = async () => {
      if (this.#closed || this.#heartbeat !== hb) return;
      if (sentAt !== null) {
        const waited = Date.now() - sentAt;
        if (waited >= limit)
          stop('unresponsive', `the device has not answered a HEARTBEAT read for ${waited} ms`);
        return;
      }
      sentAt = Date.now();
      try {
        const v = await this.#dev.read32(BAR0, REG.HEARTBEAT);
        hb.stale = v === hb.last ? hb.stale + 1 : 0;
        hb.last = v;
        if (hb.stale >= 2) stop('hang', `heartbeat stopped at ${v}`);
      } catch (err) {
        // The connection is gone: the broker sees 'close' on the device and reconnects.
        if ((err as { code?: string }).code === 'ECONNRESET') return;
        hb.stale++;
        if (hb.stale >= 2) stop('hang', `heartbeat reads fail: ${(err as Error).message}`);
      } finally {
        sentAt = null;
      }
    };
  }

  #stopHeartbeat(): void {
    if (this.#heartbeat) clearInterval(this.#heartbeat.timer);
    this.#heartbeat = null;
  }
}

export const sa1DriverFactory: DriverFactory = {
  name: 'sa1',
  matches: (device) => device.ids.vendor === SA1_VENDOR && device.ids.device === SA1_DEVICE,
  create: (device, config) => new Sa1Driver(device, config),
};
