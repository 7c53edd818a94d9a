// The SA-1 device model: all device state and every owner-visible action,
// as synchronous methods. The worker (worker.ts) drives it in a loop; tests
// can drive it in-process with step()/runUntilIdle() and a HeapBacking.

import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../vfio/uapi/vfio.js';
import { VfioError } from '../vfio/user/device-model.js';
import { bar0Read32, bar0Write32, msixTableBytes } from './bar0.js';
import { ConfigSpace } from './config-space.js';
import {
  BAR0_SIZE,
  CONFIG_SPACE_SIZE,
  FAULT_FW,
  FAULT_HANG,
  FAULT_QUEUE_DEVICE,
  MSIX_ENTRY_SIZE,
  Q_CTRL_ENABLE,
  Q_CTRL_RESET,
  Q_STATUS_ERROR,
  Q_STATUS_ERROR_SHIFT,
  Q_STATUS_IDLE,
  Q_STATUS_RUNNING,
  ST_IOMMU_FAULT,
  STATUS_FAULT_PENDING,
  STATUS_FW_RUNNING,
  STATUS_HUNG,
  STATUS_READY,
} from './datasheet.js';
import { Engine, IRQ_BATCH_MAX } from './engine.js';
import { FaultLog } from './faults.js';
import { Firmware, verifyImage } from './firmware.js';
import { type DmaMapping, Iommu } from './iommu.js';
import { DeviceMemory, gather, type Segments } from './memory.js';
import { bar2Size, type Sa1Options } from './options.js';
import { Queue } from './queue.js';
import type { Backing, SliceRef } from './slices.js';

export interface DeviceHooks {
  /** Deliver an interrupt: VFIO irq index (MSI-X, ERR) and vector. */
  interrupt(index: number, vector: number): void;
  /** Clock in milliseconds (default performance.now). */
  now?(): number;
}

/** Interrupt-drop injection: drop the next `count` interrupts matching index/vector (undefined = any). */
interface DropRule {
  count: number;
  index?: number;
  vector?: number;
}

/** What armKicks() found (see there). */
export const ARMED = 0;
export const BACKLOG = 1;
export const RACED = 2;
export type ArmResult = typeof ARMED | typeof BACKLOG | typeof RACED;

export class Sa1Device {
  readonly config: ConfigSpace;
  readonly iommu = new Iommu();
  readonly faults: FaultLog;
  readonly firmware: Firmware;
  readonly queues: Queue[];
  readonly devmem: DeviceMemory;
  readonly msixTable: Uint8Array;
  readonly engine: Engine;
  controlEnable = false;
  scratch = 0;
  hung = false;

  // --- fault injection (programmatic only, never through a BAR) ---
  delayAllMs = 0;
  readonly delayQueueMs = new Map<number, number>();
  readonly #drops: DropRule[] = [];
  readonly #now: () => number;

  constructor(
    readonly options: Sa1Options,
    readonly backing: Backing,
    private readonly hooks: DeviceHooks,
  ) {
    this.#now = hooks.now ?? (() => performance.now());
    this.config = new ConfigSpace(
      { bar0: BAR0_SIZE, bar2: bar2Size(options), bar4: options.devmemSize },
      options.numQueues + 1,
    );
    this.faults = new FaultLog(() => this.#interrupt(VFIO_PCI_MSIX_IRQ_INDEX, options.numQueues));
    this.firmware = new Firmware(this.#now);
    this.queues = Array.from(
      { length: options.numQueues },
      (_, i) => new Queue(i, () => backing.pages[i] as Uint8Array),
    );
    this.devmem = new DeviceMemory(options.devmemSize, options.devmemGranule, () => backing.granules);
    this.msixTable = new Uint8Array(msixTableBytes(options.numQueues));
    this.#maskAllVectors();
    this.engine = new Engine({
      iommu: this.iommu,
      devmem: this.devmem,
      faults: this.faults,
      now: this.#now,
      delayMs: (q) => this.delayQueueMs.get(q.index) ?? this.delayAllMs,
      signalQueue: (q) => {
        if (q.vector <= this.options.numQueues) this.#interrupt(VFIO_PCI_MSIX_IRQ_INDEX, q.vector);
      },
    });
  }

  /** Queues may run: CONTROL.ENABLE, firmware running, not hung, bus master set. */
  canRun(): boolean {
    return this.controlEnable && this.firmware.running && !this.hung && this.config.busMaster;
  }

  status(): number {
    return (
      STATUS_READY |
      (this.firmware.running ? STATUS_FW_RUNNING : 0) |
      (this.faults.pending ? STATUS_FAULT_PENDING : 0) |
      (this.hung ? STATUS_HUNG : 0)
    );
  }

  queueStatus(q: Queue): number {
    return (
      (q.enabled && !q.error && this.canRun() ? Q_STATUS_RUNNING : 0) |
      (q.error ? Q_STATUS_ERROR : 0) |
      (q.inflight.length === 0 ? Q_STATUS_IDLE : 0) |
      ((q.lastError & 0xff) << Q_STATUS_ERROR_SHIFT)
    );
  }

  // --- region access (the owner's REGION_READ / REGION_WRITE) ---

  regionSize(index: number): number {
    switch (index) {
      case VFIO_PCI_BAR0_REGION_INDEX:
        return BAR0_SIZE;
      case VFIO_PCI_BAR2_REGION_INDEX:
        return bar2Size(this.options);
      case VFIO_PCI_BAR4_REGION_INDEX:
        return this.options.devmemSize;
      case VFIO_PCI_CONFIG_REGION_INDEX:
        return CONFIG_SPACE_SIZE;
      default:
        return 0;
    }
  }

  regionRead(index: number, offset: number, count: number): Uint8Array {
    this.#checkAccess(index, offset, count);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.config.read(offset, count);
    if (index === VFIO_PCI_BAR4_REGION_INDEX) {
      return gather(this.devmem.segments(offset, count), new Uint8Array(count));
    }
    const out = new Uint8Array(count);
    const dv = new DataView(out.buffer);
    for (let i = 0; i < count; i += 4) dv.setUint32(i, this.#register32(index, offset + i), true);
    return out;
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void {
    this.#checkAccess(index, offset, data.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      this.config.write(offset, data);
      return;
    }
    if (index === VFIO_PCI_BAR4_REGION_INDEX) {
      let at = 0;
      for (const s of this.devmem.segments(offset, data.length)) {
        s.set(data.subarray(at, at + s.length));
        at += s.length;
      }
      return;
    }
    const dv = new DataView(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < data.length; i += 4) this.#writeRegister32(index, offset + i, dv.getUint32(i, true));
  }

  #checkAccess(index: number, offset: number, count: number): void {
    const size = this.regionSize(index);
    if (size === 0) throw new VfioError('EINVAL', `region ${index} is not implemented`);
    if (offset < 0 || count < 0 || offset + count > size) {
      throw new VfioError('EINVAL', `access [0x${offset.toString(16)}, +${count}) outside region ${index}`);
    }
    const isRegisterBar = index === VFIO_PCI_BAR0_REGION_INDEX || index === VFIO_PCI_BAR2_REGION_INDEX;
    if (isRegisterBar && !((count === 4 || count === 8) && offset % count === 0)) {
      throw new VfioError(
        'EINVAL',
        `register access must be 4 or 8 bytes, naturally aligned (got ${count} at 0x${offset.toString(16)})`,
      );
    }
  }

  #register32(index: number, off: number): number {
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return bar0Read32(this, off);
    const q = this.queues[Math.floor(off / this.options.queueStride)];
    return q ? q.pageRegister(off % this.options.queueStride) : 0;
  }

  #writeRegister32(index: number, off: number, value: number): void {
    if (index === VFIO_PCI_BAR0_REGION_INDEX) {
      bar0Write32(this, off, value);
      return;
    }
    const q = this.queues[Math.floor(off / this.options.queueStride)];
    q?.writePageRegister(off % this.options.queueStride, value);
  }

  // --- control ---

  /** Q_CTRL write: RESET first (queue back to its reset state), then ENABLE as written. */
  writeQueueControl(q: Queue, value: number): void {
    if (value & Q_CTRL_RESET) this.resetQueue(q);
    const enable = (value & Q_CTRL_ENABLE) !== 0;
    if (q.enabled && !enable) this.engine.abort(q);
    q.enabled = enable;
  }

  /** Queue reset: in-flight descriptors ABORTED, rings and indexes zeroed, ERROR cleared, windows kept. */
  resetQueue(q: Queue): void {
    this.engine.abort(q);
    q.clearRings();
  }

  /** Whole-device reset (VFIO_USER_DEVICE_RESET, CONTROL.RESET). DMA mappings are kept. */
  reset(): void {
    for (const q of this.queues) {
      this.engine.abort(q);
      q.powerOn();
    }
    this.faults.clear();
    this.firmware.unload();
    this.hung = false;
    this.controlEnable = false;
    this.scratch = 0;
    this.devmem.zero();
    this.#maskAllVectors();
    this.#interrupt(VFIO_PCI_ERR_IRQ_INDEX, 0);
  }

  // --- IOMMU ---

  dmaMap(m: DmaMapping): void {
    this.iommu.add(m);
  }

  /**
   * Remove maps; in-flight descriptors that touch them will complete as
   * IOMMU_FAULT. Returns the maps for the caller to release: the device
   * holds no reference to them from here on.
   */
  dmaUnmap(iova: number, size: number, all = false): DmaMapping[] {
    const removed = this.iommu.remove(iova, size, all);
    for (const m of removed) for (const q of this.queues) this.engine.poison(q, m.iova, m.size);
    return removed;
  }

  /** The owner went away: reset every queue, drop every mapping, keep firmware running. */
  ownerDisconnected(): DmaMapping[] {
    for (const q of this.queues) this.resetQueue(q);
    return this.iommu.remove(0, 0, true);
  }

  /** Revoke: fresh backing for the slice; a queue page's queue is reset. */
  revokeSlice(slice: SliceRef): void {
    if (slice.kind === 'queue') this.resetQueue(this.queues[slice.index] as Queue);
    this.backing.renew(slice);
  }

  // --- fault injection ---

  injectHang(): void {
    if (this.hung) return;
    this.hung = true;
    this.firmware.hang();
    this.faults.write(FAULT_QUEUE_DEVICE, FAULT_HANG, 0n);
    this.#interrupt(VFIO_PCI_ERR_IRQ_INDEX, 0);
  }

  /** Write a fault record on queue q; a queue status code (1..7) also puts the queue in ERROR. */
  injectFault(queue: number, code = ST_IOMMU_FAULT, iova = 0n): void {
    const q = this.queues[queue];
    if (!q) throw new RangeError(`no queue ${queue} (NUM_QUEUES ${this.options.numQueues})`);
    if (code >= 1 && code <= 7) {
      q.error = true;
      q.lastError = code;
      q.publish();
    }
    this.faults.write(queue, code, iova);
  }

  setDescriptorDelay(ms: number, queue?: number): void {
    if (queue === undefined) this.delayAllMs = ms;
    else if (ms > 0) this.delayQueueMs.set(queue, ms);
    else this.delayQueueMs.delete(queue);
  }

  dropInterrupts(count: number, index?: number, vector?: number): void {
    this.#drops.push({ count, index, vector });
  }

  // --- running ---

  /**
   * One round: a pending firmware load, then one turn per runnable queue in
   * index order, then interrupts for queues whose batch ended. `between` runs
   * after every turn that did work (the worker serves owner commands there).
   */
  step(between?: () => void): boolean {
    let work = false;
    if (this.firmware.loadPending && !this.hung) {
      this.#loadFirmware();
      work = true;
    }
    if (this.canRun()) {
      for (const q of this.queues) {
        q.busy = false;
        if (!q.enabled || q.error || !this.canRun()) continue;
        q.busy = this.engine.turn(q);
        if (q.busy) {
          work = true;
          between?.();
        }
      }
    }
    for (const q of this.queues) {
      if (q.irqPending > 0 && (!q.busy || q.irqPending >= IRQ_BATCH_MAX)) this.engine.flushInterrupt(q);
    }
    return work;
  }

  /**
   * The poller is about to sleep (§2.3, rev 2): set KICK_NEEDED on every queue a doorbell could start,
   * then read each SQ_TAIL once more. RACED: a doorbell arrived since the last round (do not sleep);
   * BACKLOG: a queue holds doorbells it cannot fetch yet (full CQ: CQ_HEAD moves without a kick, so
   * keep to the short idle poll); ARMED: nothing waits, sleep until kicked.
   */
  armKicks(): ArmResult {
    let result: ArmResult = ARMED;
    if (!this.canRun()) return result;
    for (const q of this.queues) {
      if (!q.enabled || q.error) continue;
      if (q.setKickNeeded(true)) result = RACED;
      else if (result === ARMED && q.tailSeen !== q.sqHead) result = BACKLOG;
    }
    return result;
  }

  /** Awake again (§2.3): clear KICK_NEEDED wherever it is set. */
  disarmKicks(): void {
    for (const q of this.queues) if (q.kickNeeded) q.setKickNeeded(false);
  }

  /** Run rounds until one finds nothing to do (delayed descriptors not yet due count as nothing). */
  runUntilIdle(maxRounds = 1_000_000): number {
    let rounds = 0;
    while (this.step()) {
      if (++rounds >= maxRounds) throw new Error(`device still busy after ${maxRounds} rounds`);
    }
    return rounds;
  }

  /**
   * Could a doorbell be acted on right now? False when the device cannot run
   * or no queue is enabled and error-free: then only an owner command can
   * change anything, and the worker may sleep until one arrives.
   */
  pollingNeeded(): boolean {
    if (this.firmware.loadPending) return true;
    if (!this.canRun()) return false;
    return this.queues.some((q) => q.enabled && !q.error);
  }

  /** Milliseconds until the earliest delayed descriptor is due, or null when none waits. */
  nextDueInMs(): number | null {
    let due: number | null = null;
    for (const q of this.queues) {
      const head = q.inflight[0];
      if (head && (due === null || head.readyAt < due)) due = head.readyAt;
    }
    return due === null ? null : Math.max(0, due - this.#now());
  }

  #loadFirmware(): void {
    const fw = this.firmware;
    const fetch = (iova: bigint, length: number): Uint8Array | { faultIova: bigint } => {
      if (!this.config.busMaster) return { faultIova: iova };
      const segs: Segments = [];
      const fault = this.iommu.translate(Number(iova), length, false, segs);
      if (fault >= 0) return { faultIova: fault === Number(iova) ? iova : BigInt(fault) };
      return gather(segs, new Uint8Array(length));
    };
    const result = verifyImage(fw.iova, fw.len, fetch);
    fw.finish(result);
    if (!result.ok) this.faults.write(FAULT_QUEUE_DEVICE, FAULT_FW, result.faultIova);
  }

  #interrupt(index: number, vector: number): void {
    const rule = this.#drops.find(
      (r) =>
        r.count > 0 &&
        (r.index === undefined || r.index === index) &&
        (r.vector === undefined || r.vector === vector),
    );
    if (rule) {
      rule.count--;
      return;
    }
    this.hooks.interrupt(index, vector);
  }

  #maskAllVectors(): void {
    this.msixTable.fill(0);
    const dv = new DataView(this.msixTable.buffer);
    for (let v = 0; v <= this.options.numQueues; v++) dv.setUint32(v * MSIX_ENTRY_SIZE + 12, 1, true);
  }
}
