// The SA-1 driver: boots the accelerator (firmware, enable, fault vector),
// offers the `queue` lease kind, and programs each queue's IOVA and
// device-memory windows before enabling it — the device-side half of the
// isolation (the IOMMU is the other half). The register work on one queue
// (reset, the grant's writes, the wait for IDLE) is queue-program.ts; the
// health reads (status report, alive after recovery, as left after an upgrade)
// are health.ts; which queues may be leased, and which need no reset first,
// pools.ts (QueuePool).

import { EventEmitter } from 'node:events';
import type { Device } from '../../device/device.js';
import { VfioError } from '../../errors.js';
import {
  BAR0,
  BAR2,
  BAR4,
  CONTROL,
  FW_STATUS,
  Q,
  Q_CTRL,
  qcfg,
  REG,
  SA1_DEVICE,
  SA1_ID_VALUE,
  SA1_VENDOR,
  STATUS,
} from '../../hw/sa1/regs.js';
import type { Fd } from '../../sys/fd.js';
import { type BarType, barTypeAt, buildLeaseConfigSpace, readBarTypes } from '../config-space.js';
import type { Driver, DriverConfig, DriverFactory, LeaseRequest, LeaseResources } from '../driver.js';
import { PollTimeoutError } from '../poll.js';
import { bootFirmware } from './boot.js';
import { enableBusMaster, resetDevice, revokeAll } from './device-commands.js';
import { layoutProblems, queueLeaseResources } from './grant.js';
import { checkAlive, checkAsLeft, RECOVER_WAITS_MS, readStatusRegisters } from './health.js';
import { Sa1Monitor } from './monitor.js';
import { Granules, QueuePool, WindowSlots } from './pools.js';
import { PreparedPages } from './prepared-pages.js';
import { QcfgShadow } from './qcfg-shadow.js';
import { programQueue, quiesceQueueRegisters, resetQueueRegisters, resetWhat } from './queue-program.js';

export { DEVICE_RESET_TIMEOUT_MS } from './device-commands.js';
export { DEVMEM_LEASE_REGION0 } from './grant.js';

export interface Sa1Geometry {
  numQueues: number;
  queueStride: number;
  devmemSize: bigint;
  granule: number;
}

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
  readonly recoverWaitsMs = RECOVER_WAITS_MS;
  readonly #dev: Device;
  readonly #cfg: DriverConfig;
  #geo: Sa1Geometry | null = null;
  /** The queue-page BAR's type, mirrored in lease config spaces. */
  #bar2Type: BarType | null = null;
  /** Free, stuck and clean queues (pools.ts): a clean one's reset was paid at the last reclaim, not the grant. */
  readonly #queues = new QueuePool();
  /** Each queue's configuration registers as last written (a grant writes only what changes). */
  readonly #qcfg = new QcfgShadow();
  #windows: WindowSlots | null = null;
  #granules: Granules | null = null;
  readonly #monitor: Sa1Monitor;
  /** Queue pages whose next slice fd a reclaim asked for (the next grant of the queue asks none). */
  readonly #prepared: PreparedPages;

  constructor(dev: Device, cfg: DriverConfig) {
    super();
    this.#dev = dev;
    this.#cfg = cfg;
    this.#monitor = new Sa1Monitor(dev, cfg, this);
    this.#prepared = new PreparedPages(dev, cfg);
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
      await resetDevice(this.#dev);
      status = await d.read32(BAR0, REG.STATUS);
    }
    // Stop every queue a previous owner may have left enabled (or in reset) before leasing them again; one
    // whose reset does not finish stays out of the pool.
    this.#queues.forget();
    this.#qcfg.clear();
    this.#prepared.drop();
    for (let q = 0; q < g.numQueues; q++) {
      if (!((await d.read32(BAR0, qcfg(q, Q.CTRL))) & (Q_CTRL.ENABLE | Q_CTRL.RESET))) continue;
      await this.#resetQueue(q).catch((err: { code?: string }) => {
        if (err.code !== 'ETIMEDOUT') throw err;
      });
    }
    // Clients of a previous broker may still hold slices of this device: revoke them all, so nothing
    // handed out before this boot can reach a queue page or granule we are about to lease again.
    if (this.#cfg.lifetime.revoke && d.capabilities.revocableSlices) {
      await revokeAll(d, BAR2, g.numQueues, BigInt(g.queueStride));
      await revokeAll(d, BAR4, Number(g.devmemSize / BigInt(g.granule)), BigInt(g.granule));
    }
    await enableBusMaster(this.#dev);
    if ((await d.read32(BAR0, REG.FW_STATUS)) !== FW_STATUS.RUNNING) {
      await bootFirmware(d, this.#cfg.sa1.firmware);
    }
    await d.write32(BAR0, REG.CONTROL, CONTROL.ENABLE);

    this.#queues.fill(g.numQueues);
    this.#windows = new WindowSlots(this.#cfg.sa1.windowSize, g.numQueues, d.iovaRanges());
    this.#granules = new Granules(g.devmemSize, BigInt(g.granule));
    await this.#monitor.arm(g.numQueues);
    await this.#monitor.skipFaults();
    this.#monitor.startHeartbeat();
  }

  validateLayout(): void {
    const problems = layoutProblems(this.geometry, this.#cfg.layout.pageSize);
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
    const stride = BigInt(g.queueStride);
    const q = this.#queues.take((p) => this.#prepared.holds(p, stride));
    if (q === undefined) {
      const stuck = this.#queues.stuck.length
        ? ` or quarantined (${this.#queues.stuck.length} whose reset did not finish)`
        : '';
      throw new VfioError('ENOSPC', `all ${g.numQueues} queues are leased${stuck}`);
    }
    const window = this.#windows!.take(q);
    const devmem = granules ? this.#granules!.take(granules) : null;
    if (granules && !devmem) {
      this.#queues.untake(q);
      throw new VfioError('ENOSPC', `no ${granules} contiguous free device-memory granules`);
    }
    return queueLeaseResources({
      geometry: g,
      queue: q,
      window,
      devmem,
      granules,
      cooperative: this.#cooperativeLayout,
      revocable: this.#dev.capabilities.revocableSlices,
      iovaView: this.#cfg.sa1.iovaView,
    });
  }

  async activate(res: LeaseResources): Promise<void> {
    const d = this.#dev;
    const q = res.queue!;
    // A clean queue: indexes zero, error cleared (reclaim left it so, or reset it now).
    if (!this.#queues.takeClean(q)) await this.#resetQueue(q);
    await programQueue(d, this.#qcfg, q, res);
  }

  async quiesce(res: LeaseResources): Promise<void> {
    const q = res.queue!;
    const d = this.#dev;
    this.#queues.notClean(q);
    // One Q_CTRL write stops and resets the queue: RESET with ENABLE written 0. The device acts on RESET
    // first (in-flight descriptors complete ABORTED, rings and indexes zeroed), then takes ENABLE as written
    // (docs/SA-1.md, "Quiesce"). A reclaim has nothing to drain gracefully, and every Q_CTRL write is a round
    // trip to the device's engine: a disable, a wait for IDLE and then a reset cost two. The read that
    // confirms it (RESET cleared and Q_STATUS.IDLE, one 8-byte read of both) goes out with the write, in
    // order on the wire.
    try {
      await quiesceQueueRegisters(d, q, this.#cfg.lifetime.quiesceTimeoutMs);
    } catch (err) {
      // Only a reset that never finished takes the queue out of the pool. A queue that never reports IDLE, or
      // a device that does not answer at all (the channel's ETIMEDOUT), fails the quiesce: the broker then
      // quarantines the lease, and the queue with it.
      if (err instanceof PollTimeoutError && err.what === resetWhat(q)) this.#queues.quarantine(q);
      throw err;
    }
  }

  async prepare(res: LeaseResources): Promise<void> {
    // Called after the broker revoked the lease's slices, and "a revoked queue page's queue is reset"
    // (datasheet rev 2, section 8): the device reset the queue once its last holder could no longer write
    // the page, so nothing it wrote there (ring bases, a doorbell) reaches the next lease, which is granted
    // without a reset of its own. No device command is needed (prepareAhead() asked for the page's fresh fd).
    this.#queues.markClean(res.queue!);
    if (this.#prepared.done(res.queue!)) this.#queues.markPrepared(res.queue!);
  }

  prepareAhead(res: LeaseResources): void {
    // The page's fresh slice fd, asked in the reclaim's last batch (its unmaps): the reply comes behind
    // theirs, and nothing of the reclaim waits for it.
    this.#prepared.ask(res);
  }

  async resetLease(res: LeaseResources): Promise<void> {
    this.#queues.notClean(res.queue!);
    await this.#resetQueue(res.queue!);
    await this.#dev.write32(BAR0, qcfg(res.queue!, Q.CTRL), Q_CTRL.ENABLE);
  }

  async scrub(res: LeaseResources): Promise<void> {
    // A queue reset zeroes the whole queue page (ring registers and the reserved rest).
    this.#queues.notClean(res.queue!);
    await this.#resetQueue(res.queue!);
    this.#queues.markClean(res.queue!);
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
    this.#queues.give(q);
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
    return {
      driver: 'sa1',
      ...(await readStatusRegisters(this.#dev)),
      geometry: { ...this.geometry, devmemSize: this.geometry.devmemSize.toString() },
      freeQueues: this.#queues.freeCount,
      quarantinedQueues: this.#queues.stuck,
      // Held (answered): a count of the broker's descriptors includes exactly these; those asked and not yet
      // answered apart.
      preparedSliceFds: this.#dev.preparedSliceFdsHeld ?? 0,
      preparedSliceFdsAsked: (this.#dev.preparedSliceFdCount ?? 0) - (this.#dev.preparedSliceFdsHeld ?? 0),
    };
  }

  /** Whole-device recovery after a hang: reset, reload firmware, enable. Leases must already be reclaimed. */
  async recover(): Promise<void> {
    this.#monitor.stopHeartbeat();
    this.#queues.forgetClean();
    this.#qcfg.clear();
    this.#prepared.drop();
    await resetDevice(this.#dev);
    await enableBusMaster(this.#dev);
    await bootFirmware(this.#dev, this.#cfg.sa1.firmware);
    await this.#dev.write32(BAR0, REG.CONTROL, CONTROL.ENABLE);
    await this.#monitor.skipFaults(false);
    // A hang during the attempt (its ERR joined the recovery in progress) must fail the attempt, not be
    // forgotten: the device is back only if it is not hung and its heartbeat moves.
    await checkAlive(this.#dev);
    this.#monitor.startHeartbeat();
  }

  // ---- broker upgrade (src/broker/handover): see Driver.hold/handover/adopt ----

  async hold(): Promise<void> {
    await this.#monitor.hold();
  }

  unhold(): void {
    this.#monitor.unhold();
  }

  handover(): { state: Sa1HandoverState; fds: Fd[] } {
    const fds = this.#monitor.eventFds();
    if (!this.#geo || !fds) throw new Error('sa1: not booted: nothing to hand over');
    return {
      state: {
        geometry: { ...this.#geo, devmemSize: this.#geo.devmemSize.toString() },
        bar2Type: this.#bar2Type,
        stuckQueues: this.#queues.stuck,
        cleanQueues: this.#queues.clean,
        faultsSeen: this.#monitor.faultsSeen,
      },
      fds,
    };
  }

  async adopt(
    state: unknown,
    fds: Fd[],
    leased: LeaseResources[],
    parked: LeaseResources[] = [],
  ): Promise<void> {
    const s = state as Sa1HandoverState;
    const [faultFd, errFd] = fds;
    if (!faultFd || !errFd || !s?.geometry) throw new Error('sa1: the handed-over state lacks its eventfds');
    this.#geo = { ...s.geometry, devmemSize: BigInt(s.geometry.devmemSize) };
    this.validateLayout();
    this.#bar2Type = s.bar2Type;
    this.#queues.adopt(s.stuckQueues, s.cleanQueues);
    this.#qcfg.clear();
    const g = this.#geo;
    this.#queues.fill(g.numQueues, new Set([...leased, ...parked].map((r) => r.queue)));
    this.#windows = new WindowSlots(this.#cfg.sa1.windowSize, g.numQueues, this.#dev.iovaRanges());
    this.#granules = new Granules(g.devmemSize, BigInt(g.granule));
    for (const r of [...leased, ...parked]) if (r.devmem) this.#granules.reserve(r.devmem);
    this.#monitor.adopt(faultFd, errFd, s.faultsSeen);
    await checkAsLeft(this.#dev, leased);
    this.unhold();
  }

  deviceLost(): void {
    this.#monitor.stopHeartbeat();
    this.#queues.empty();
    this.#qcfg.clear();
    this.#prepared.drop();
    this.#monitor.closeInterrupts();
    this.#windows = null;
    this.#granules = null;
  }

  close(): void {
    this.#monitor.close();
  }

  /**
   * Q_CTRL.RESET until it reads 0, bounded by lifetime.quiesce_timeout_ms. On ETIMEDOUT the queue is
   * quarantined: out of the pool for the life of this driver (as the broker's quarantined leases are); the
   * next boot checks it again.
   */
  async #resetQueue(q: number): Promise<void> {
    try {
      await resetQueueRegisters(this.#dev, q, this.#cfg.lifetime.quiesceTimeoutMs);
    } catch (err) {
      if ((err as { code?: string }).code === 'ETIMEDOUT') this.#queues.quarantine(q);
      throw err;
    }
  }
}

export const sa1DriverFactory: DriverFactory = {
  name: 'sa1',
  matches: (device) => device.ids.vendor === SA1_VENDOR && device.ids.device === SA1_DEVICE,
  create: (device, config) => new Sa1Driver(device, config),
};
