// The SA-1 device model: all device state and every owner-visible action,
// as synchronous methods. The worker (worker.ts) drives it in a loop; tests
// can drive it in-process with step()/runUntilIdle() and a HeapBacking.
// Register state lives in the register file (register-file.ts), which the
// simulator's front end shares to answer register accesses itself. The owner's
// region accesses are region-access.ts; CONTROL and Q_CTRL writes and the resets they start (and the
// stuck-reset injection holding them) are reset-control.ts; the fault injections' state is injections.ts;
// what its poller asks before it sleeps (doorbell notification) is poller.ts.

import { sleepSync } from '../../util/sleep-sync.js';
import { VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX } from '../../vfio/uapi/vfio.js';
import { deviceCanRun, statusRegister } from './bar0.js';
import { ConfigSpace } from './config-space.js';
import {
  BAR0_SIZE,
  FAULT_FW,
  FAULT_HANG,
  FAULT_QUEUE_DEVICE,
  MSIX_ENTRY_SIZE,
  REG_MSIX_TABLE,
  REG_SCRATCH,
  ST_IOMMU_FAULT,
} from './datasheet.js';
import { Engine, IRQ_BATCH_MAX } from './engine.js';
import { FaultLog } from './faults.js';
import { Firmware, imageFetch, verifyImage } from './firmware.js';
import { Injections } from './injections.js';
import { type DmaMapping, Iommu } from './iommu.js';
import { DeviceMemory } from './memory.js';
import { bar2Size, type Sa1Options } from './options.js';
import { Queue } from './queue.js';
import { readRegion, writeRegion } from './region-access.js';
import { RegisterFile } from './register-file.js';
import { ResetControl } from './reset-control.js';
import type { Backing, SliceRef } from './slices.js';

export interface DeviceHooks {
  /** Deliver an interrupt: VFIO irq index (MSI-X, ERR) and vector. */
  interrupt(index: number, vector: number): void;
  /** Clock in milliseconds (default performance.now). */
  now?(): number;
}

export class Sa1Device {
  readonly config: ConfigSpace;
  readonly iommu = new Iommu();
  readonly faults: FaultLog;
  readonly firmware: Firmware;
  readonly queues: Queue[];
  readonly devmem: DeviceMemory;
  readonly msixTable: Uint8Array;
  readonly engine: Engine;

  /** Fault injection (programmatic only, never through a BAR): injections.ts. */
  readonly #inject = new Injections();
  /** CONTROL and Q_CTRL writes, queue resets, and the resets a stuck-reset injection holds: reset-control.ts. */
  readonly #resets: ResetControl;
  readonly #now: () => number;
  /**
   * The queues a round visits, in index order: those that can run (enabled, no ERROR) and those that still
   * owe an interrupt or hold in-flight descriptors. Null when a queue's ENABLE or ERROR changed since it was
   * built. A round walks this instead of every queue: with 64 queues and one in use, a round after the
   * poller's sleep touched 64 queue objects, twice, all of them cold (issue 16).
   */
  #watched: Queue[] | null = null;

  /**
   * `regs`: the register file to keep register state in (the simulator's worker is given the one its
   * front end shares); a fresh one by default.
   */
  constructor(
    readonly options: Sa1Options,
    readonly backing: Backing,
    private readonly hooks: DeviceHooks,
    readonly regs: RegisterFile = RegisterFile.create(options),
  ) {
    this.#now = hooks.now ?? (() => performance.now());
    this.config = new ConfigSpace(
      { bar0: BAR0_SIZE, bar2: bar2Size(options), bar4: options.devmemSize },
      options.numQueues + 1,
      regs.config,
    );
    this.faults = new FaultLog(regs, () => this.#interrupt(VFIO_PCI_MSIX_IRQ_INDEX, options.numQueues));
    this.firmware = new Firmware(this.#now, regs);
    this.queues = Array.from(
      { length: options.numQueues },
      (_, i) =>
        new Queue(
          i,
          regs,
          () => backing.pages[i] as Uint8Array,
          backing.zeroPage ? (from) => backing.zeroPage!(i, from) : undefined,
        ),
    );
    for (const q of this.queues) q.onRunStateChange = () => (this.#watched = null);
    this.devmem = new DeviceMemory(options.devmemSize, options.devmemGranule, () => backing.granules);
    this.msixTable = regs.msixTable(options.numQueues);
    this.#maskAllVectors();
    this.engine = new Engine({
      iommu: this.iommu,
      devmem: this.devmem,
      faults: this.faults,
      now: this.#now,
      delayMs: (q) => this.#inject.delayMs(q.index),
      busMaster: () => this.config.busMaster,
      hung: () => this.regs.hung,
      signalQueue: (q) => {
        if (q.vector <= this.options.numQueues) this.#interrupt(VFIO_PCI_MSIX_IRQ_INDEX, q.vector);
      },
      errorLag: () => this.#errorLag(),
    });
    this.#resets = new ResetControl(regs, this.#inject, this.engine, this.queues, () => this.reset());
  }

  get scratch(): number {
    return this.regs.load(REG_SCRATCH);
  }
  set scratch(v: number) {
    this.regs.store(REG_SCRATCH, v);
  }
  get hung(): boolean {
    return this.regs.hung;
  }
  set hung(v: boolean) {
    this.regs.hung = v;
  }

  /** Queues may run: CONTROL.ENABLE, firmware running, not hung, bus master set. */
  canRun(): boolean {
    return deviceCanRun(this.regs);
  }

  status(): number {
    return statusRegister(this.regs);
  }

  // --- region access (the owner's REGION_READ / REGION_WRITE) ---

  regionRead(index: number, offset: number, count: number): Uint8Array {
    return readRegion(this, this.#now(), index, offset, count);
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void {
    writeRegion(this, index, offset, data);
  }

  // --- control (reset-control.ts) ---

  /** CONTROL write (bar0.ts): RESET first (unless a stuck-reset injection holds it), then ENABLE as written. */
  writeControl(value: number): void {
    this.#resets.writeControl(value);
  }

  /** Q_CTRL write (bar0.ts): RESET first (queue back to its reset state), then ENABLE as written. */
  writeQueueControl(q: Queue, value: number): void {
    this.#resets.writeQueueControl(q, value);
  }

  /** Queue reset: in-flight descriptors ABORTED, rings and indexes zeroed, ERROR cleared, windows kept. */
  resetQueue(q: Queue): void {
    this.#resets.resetQueue(q);
  }

  /**
   * Whole-device reset (VFIO_USER_DEVICE_RESET, CONTROL.RESET). DMA mappings
   * are kept. No ERR: the owner asked for it (datasheet 2.4, rev 2), and QEMU
   * sends DEVICE_RESET at every machine reset and stops the VM on ERR.
   */
  reset(): void {
    this.#resets.finishAll();
    for (const q of this.queues) {
      this.engine.abort(q);
      q.powerOn();
    }
    this.faults.clear();
    this.firmware.unload();
    this.hung = false;
    this.#resets.controlEnable = false;
    this.scratch = 0;
    this.devmem.zero();
    this.#maskAllVectors();
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
    // A queue's cached COPY maps (fast-path.ts) would go stale by the generation anyway; dropped here so no
    // queue keeps the released memory reachable until its next COPY.
    if (removed.length) for (const q of this.queues) q.forgetCopyMaps();
    return removed;
  }

  /** The owner went away: reset every queue, drop every mapping, keep firmware running. */
  ownerDisconnected(): DmaMapping[] {
    for (const q of this.queues) this.resetQueue(q);
    return this.iommu.remove(0, 0, true);
  }

  /**
   * Revoke: fresh backing for the slice; a queue page's queue is reset. `fault` (default): the old memory is
   * truncated so every mapping of it faults; off: the old memory is only let go of (see Backing.renew).
   */
  revokeSlice(slice: SliceRef, opts: { fault?: boolean } = {}): void {
    if (slice.kind === 'queue') this.resetQueue(this.queues[slice.index] as Queue);
    this.backing.renew(slice, opts);
  }

  // --- fault injection ---

  /**
   * Stuck reset: Q_CTRL.RESET of `queue` (or, with no queue, CONTROL.RESET and every Q_CTRL.RESET) begins
   * but never finishes. `stuck` false ends the injection and finishes the resets it held.
   */
  setStuckReset(stuck: boolean, queue?: number): void {
    if (queue !== undefined && !this.queues[queue]) {
      throw new RangeError(`no queue ${queue} (NUM_QUEUES ${this.options.numQueues})`);
    }
    this.#resets.setStuckReset(stuck, queue);
  }

  /** The next `count` firmware loads hang the device instead of running (0 clears). */
  hangOnFirmwareLoad(count: number): void {
    this.#inject.hangOnFirmwareLoad(count);
  }

  injectHang(): void {
    if (this.hung) return;
    // The hang ends every completion batch: what is owed for completions already written is signalled as it
    // begins (§2.4), before HUNG shows. From then on the device signals nothing new (it runs no turn, so no
    // queue comes to owe an interrupt) but the hang's own fault vector and ERR (docs/SA-1.md).
    for (const q of this.queues) if (q.irqPending > 0) this.engine.flushInterrupt(q);
    const record = this.faults.record(FAULT_QUEUE_DEVICE, FAULT_HANG, 0n);
    this.hung = true;
    this.firmware.hang();
    this.faults.signal(record);
    this.#interrupt(VFIO_PCI_ERR_IRQ_INDEX, 0);
  }

  /** Write a fault record on queue q; a queue status code (1..7) also puts the queue in ERROR. */
  injectFault(queue: number, code = ST_IOMMU_FAULT, iova = 0n): void {
    const q = this.queues[queue];
    if (!q) throw new RangeError(`no queue ${queue} (NUM_QUEUES ${this.options.numQueues})`);
    const record = this.faults.record(queue, code, iova);
    if (code >= 1 && code <= 7) {
      q.lastError = code; // before ERROR, as a queue fault does
      q.error = true;
      q.publish();
    }
    this.faults.signal(record);
  }

  /**
   * The next error the device raises itself (a queue fault: a data fault, a bad queue configuration, an
   * unmapped ring slot; a firmware load error) shows its state `ms` after what it wrote (inject 'errorLag').
   * The whole device worker waits: every queue and owner command with it.
   */
  setErrorLag(ms: number): void {
    this.#inject.setErrorLag(ms);
  }

  /**
   * The next completion holds `ms` between its entry and CQ_TAIL (inject 'completionLag'). A field of the
   * engine, not Injections: the hot path checks it once per completion without a call.
   */
  setCompletionLag(ms: number): void {
    this.engine.completionLagMs = ms;
  }

  #errorLag(): void {
    sleepSync(this.#inject.takeErrorLag());
  }

  setDescriptorDelay(ms: number, queue?: number): void {
    this.#inject.setDescriptorDelay(ms, queue);
  }

  dropInterrupts(count: number, index?: number, vector?: number): void {
    this.#inject.dropInterrupts(count, index, vector);
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
      if (this.#inject.takeLoadHang()) {
        this.injectHang(); // the load never finishes: FW_STATUS stays LOADING
      } else this.#loadFirmware();
      work = true;
    }
    // Whether queues may run is read once a round, and again only after `between` served owner commands
    // (a CONTROL write, a reset, a hang can stop them): the registers cost a load each, every round.
    let canRun = this.canRun();
    // The list as of the round's start: a queue enabled by an owner command served between turns runs from
    // the next round; one that stops (disabled, ERROR) is skipped by the check below.
    const watched = this.watchedQueues;
    for (const q of watched) {
      // Cleared whether or not the device can run: a queue that takes no turn this round ended its batch, and
      // the flush below signals what its completions are owed (§2.4), also when the device stopped (CONTROL,
      // bus master, a firmware load that failed) right after writing them.
      q.busy = false;
      if (!canRun || !q.enabled || q.error) continue;
      q.busy = this.engine.turn(q);
      if (q.busy) {
        q.publishInflight(q.inflight.length);
        work = true;
        if (between) {
          between();
          canRun = this.canRun();
        }
      }
    }
    for (const q of watched) {
      if (q.irqPending > 0 && (!q.busy || q.irqPending >= IRQ_BATCH_MAX)) this.engine.flushInterrupt(q);
    }
    return work;
  }

  /**
   * The queues a round visits (see #watched): every queue that can run, owes an interrupt or holds in-flight
   * descriptors is in it. Only a turn adds in-flight descriptors or owed interrupts, and only to a queue that
   * can run; abort() signals what it owes at once.
   */
  get watchedQueues(): readonly Queue[] {
    if (this.#watched === null) {
      this.#watched = this.queues.filter(
        (q) => (q.enabled && !q.error) || q.irqPending > 0 || q.inflight.length > 0,
      );
    }
    return this.#watched;
  }

  /** Run rounds until one finds nothing to do (delayed descriptors not yet due count as nothing). */
  runUntilIdle(maxRounds = 1_000_000): number {
    let rounds = 0;
    while (this.step()) {
      if (++rounds >= maxRounds) throw new Error(`device still busy after ${maxRounds} rounds`);
    }
    return rounds;
  }

  /** Milliseconds until the earliest delayed descriptor is due, or null when none waits. */
  nextDueInMs(): number | null {
    let due: number | null = null;
    for (const q of this.watchedQueues) {
      const head = q.inflight[0];
      if (head && (due === null || head.readyAt < due)) due = head.readyAt;
    }
    return due === null ? null : Math.max(0, due - this.#now());
  }

  #loadFirmware(): void {
    const fw = this.firmware;
    const result = verifyImage(fw.iova, fw.len, imageFetch(this.iommu, this.config.busMaster));
    // The record before FW_STATUS leaves LOADING: an owner that sees the error finds its record.
    const record = result.ok ? null : this.faults.record(FAULT_QUEUE_DEVICE, FAULT_FW, result.faultIova);
    if (record) this.#errorLag();
    fw.finish(result);
    if (record) this.faults.signal(record);
  }

  #interrupt(index: number, vector: number): void {
    if (this.#inject.takeDrop(index, vector)) return;
    this.hooks.interrupt(index, vector);
  }

  /** Every MSI-X vector control word masked, the rest of the table zero (power-on and reset). */
  #maskAllVectors(): void {
    for (let v = 0; v <= this.options.numQueues; v++) {
      const entry = REG_MSIX_TABLE + v * MSIX_ENTRY_SIZE;
      this.regs.store64(entry, 0n);
      this.regs.store(entry + 8, 0);
      this.regs.store(entry + 12, 1);
    }
  }
}
