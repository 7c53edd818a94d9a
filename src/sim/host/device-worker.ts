// The main-thread half of the simulator's device: DeviceWorker starts the
// device worker and holds what both threads share: the register file (the
// front end answers register accesses from it), the irq eventfd table, the
// front end's copy of the IOMMU table, the kick fds, and the mailbox for
// everything the worker itself must do (mailbox.ts). One per simulator;
// Sa1Frontend (frontend.ts) is the per-connection view on it.

import { MessageChannel, Worker } from 'node:worker_threads';
import { VfioError } from '../../errors.js';
import { type Fd, MAX_FDS, native } from '../../sys/index.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../vfio/uapi/pci-regs.js';
import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
} from '../../vfio/uapi/vfio.js';
import { ConfigSpace, writeReachesCommand } from '../model/config-space.js';
import { BAR0_SIZE } from '../model/datasheet.js';
import { sliceFdIndex, sliceFdTable } from '../model/memfd-backing.js';
import { bar2Size, type Sa1Options } from '../model/options.js';
import { checkRegionAccess, regionSize } from '../model/regions.js';
import { RegisterFile } from '../model/register-file.js';
import { Bar0Access } from './bar0-access.js';
import { deviceRequestSlots } from './command-slots.js';
import type { DeviceRequest, DeviceStats, InjectRequest, WorkerStats } from './commands.js';
import { resolveMaxDmaMaps } from './dma-limit.js';
import { FrontDmaTable } from './dma-table.js';
import { IrqTable } from './irq-table.js';
import { MailboxCaller, newMailboxMemory } from './mailbox.js';
import { PageTable, renewPage } from './page-revoke.js';
import { newRemoteDmaMemory, RemoteDmaServer } from './remote-dma.js';
import { SliceAccess } from './slice-access.js';
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
  /** Serves the device's accesses to owner memory that came without an fd (remote-dma.ts). */
  readonly remote: RemoteDmaServer;
  #kicksOut = false;
  /** The last doorbell wake post (slice-access.ts), while the device may not have taken it. */
  #doorbellPost: number | null = null;
  /** The slices' current memfd numbers, published by the worker's backing (memfd-backing.ts). */
  readonly #sliceFds: Int32Array;
  /** Queue page addresses and inodes, and the spare page memory (page-revoke.ts). */
  readonly #pages: PageTable;
  /**
   * The queues' kick ioeventfds (the worker owns and closes them; replies carry dups): one per queue, up to the
   * fds one message can carry (MAX_FDS); beyond that queues share them (io-fds.ts), and the worker sleeps on
   * at most that many.
   */
  readonly #kickFds: number[];
  /** BAR0 accesses, served from the register file on this thread (bar0-access.ts). */
  readonly #bar0: Bar0Access;
  /** BAR2 and BAR4 accesses, served from the slices' memory on this thread (slice-access.ts). */
  readonly #slices: SliceAccess;
  #worker: Worker;
  #exited: Promise<void>;
  #closed = false;
  /** The worker is gone (closed, or died): the register file no longer describes a live device. */
  #gone = false;

  /** `maxDmaMaps`: the max_dma_maps the simulator advertises (dma-limit.ts); default the most it can hold (OptionError if none). */
  static async start(
    options: Sa1Options,
    timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS,
    maxDmaMaps = resolveMaxDmaMaps(options, undefined),
    log: (message: string, err?: unknown) => void = () => {},
  ): Promise<DeviceWorker> {
    const dw = new DeviceWorker(options, timeoutMs, maxDmaMaps, log);
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
    maxDmaMaps: number,
    log: (message: string, err?: unknown) => void,
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
    this.#mailbox = new MailboxCaller(wake, port1, deviceRequestSlots, timeoutMs);
    const irqMemory = IrqTable.memory(options.numQueues);
    this.irqs = new IrqTable(irqMemory, options.numQueues);
    this.dma = new FrontDmaTable(this.#mailbox, timeoutMs, maxDmaMaps);
    // Non-blocking: a lease client writes them on its submit path and refuses a kick fd that could block
    // (docs/PROTOCOL.md); the broker hands out dups, which share this description and its flag.
    const { EFD_NONBLOCK } = native.constants as Record<string, number>;
    this.#kickFds = Array.from({ length: Math.min(options.numQueues, MAX_FDS) }, () =>
      native.eventfd(0, EFD_NONBLOCK as number),
    );
    this.#sliceFds = sliceFdTable(options);
    this.#bar0 = new Bar0Access(options, this.#regs, this.#mailbox, this.#sliceFds, () => this.#kicksOut);
    this.#slices = new SliceAccess(options, this.#sliceFds, (q) => this.#doorbell(q));
    const pages = PageTable.memory(options.numQueues);
    this.#pages = new PageTable(pages);
    const remoteDma = newRemoteDmaMemory();
    this.remote = new RemoteDmaServer(
      remoteDma,
      (iova, length, write) => this.dma.covers(iova, length, write),
      (post) => this.#mailbox.untaken(post),
      log,
    );
    this.dma.onUnmapPosted = (post, iova, size, all) => this.remote.unmapped(post, iova, size, all);
    const init: WorkerInit = {
      options,
      mailbox: wake,
      port: port2,
      registers: this.#regs.sab,
      irqs: irqMemory,
      kickFds: this.#kickFds,
      sliceFds: this.#sliceFds.buffer as SharedArrayBuffer,
      pages,
      remoteDma,
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

  /**
   * Whether the device may be using owner memory without an fd, so that it may be waiting on this thread for
   * the owner (remote-dma.ts): commands it must serve are then waited for without blocking this thread, and
   * BAR2/BAR4 accesses served from the slices here (slice-access.ts).
   */
  get waitsAsync(): boolean {
    return this.dma.remoteInUse;
  }

  /** Served here: config space, BAR0 from the register file (and BAR2/BAR4 from the slices: waitsAsync). */
  regionRead(index: number, offset: number, count: number): Uint8Array {
    this.#checkOpen();
    checkRegionAccess(this.options, index, offset, count);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.#config.read(offset, count);
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return this.#bar0.read(offset, count);
    if (this.waitsAsync) {
      if (index === VFIO_PCI_BAR2_REGION_INDEX) return this.#slices.readPages(offset, count);
      if (index === VFIO_PCI_BAR4_REGION_INDEX) return this.#slices.readDevmem(offset, count);
    }
    return this.request({ op: 'regionRead', index, offset, count });
  }

  regionWrite(index: number, offset: number, data: Uint8Array): void {
    for (const req of this.#regionWriteSteps(index, offset, data)) this.request(req);
  }

  /**
   * regionWrite(), waiting for the device without blocking this thread (see MailboxCaller.callAsync). A PCI
   * command write turning bus mastering off is waited for with accesses to the owner failing at once
   * (RemoteDmaServer.failFast): the device may not DMA then (§1), and the owner, waiting for this reply, would
   * not serve them.
   */
  regionWriteAsync(index: number, offset: number, data: Uint8Array): Promise<void> {
    const at = PCI_COMMAND - offset;
    const masterOff =
      index === VFIO_PCI_CONFIG_REGION_INDEX &&
      at >= 0 &&
      at < data.length &&
      ((data[at] as number) & PCI_COMMAND_MASTER) === 0;
    const run = async (posted?: (post: number) => void): Promise<void> => {
      for (const req of this.#regionWriteSteps(index, offset, data)) await this.requestAsync(req, posted);
    };
    return masterOff ? this.remote.failFast(run) : run();
  }

  /**
   * A device reset waited for without blocking, owner accesses failing at once until the device took it
   * (RemoteDmaServer.failFast: the owner waits for this reply and serves none).
   */
  resetAsync(): Promise<void> {
    return this.remote.failFast((posted) => this.requestAsync({ op: 'reset' }, posted));
  }

  /**
   * The owner stored SQ_TAIL through BAR2 here: wake the device (by its kick fd when it sleeps on those). One
   * wake post at a time: while the last is not taken, the device has yet to run the round that sees this store,
   * and doorbells stored in a loop while it waits on the owner must not fill the ring (a full ring would block
   * this thread, which the device may be waiting on).
   */
  #doorbell(q: number): void {
    if (this.#doorbellPost !== null && this.#mailbox.untaken(this.#doorbellPost)) return;
    const asleepOnFds = this.#mailbox.postLeavingFdSleep({ op: 'doorbell' });
    this.#doorbellPost = this.#mailbox.posts;
    if (asleepOnFds) native.eventfdWrite(this.#kickFds[q % this.#kickFds.length] as number, 1);
  }

  /**
   * A region write's own part, and the requests the device must serve, in order: each is yielded when the
   * write comes to it, and the caller has it answered before the rest of the write goes on.
   */
  *#regionWriteSteps(index: number, offset: number, data: Uint8Array): Generator<DeviceRequest, void> {
    this.#checkOpen();
    checkRegionAccess(this.options, index, offset, data.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX && !writeReachesCommand(offset, data.length)) {
      this.#config.write(offset, data);
      return;
    }
    if (this.waitsAsync) {
      if (index === VFIO_PCI_BAR2_REGION_INDEX) return this.#slices.writePages(offset, data);
      if (index === VFIO_PCI_BAR4_REGION_INDEX) return this.#slices.writeDevmem(offset, data);
    }
    if (index !== VFIO_PCI_BAR0_REGION_INDEX) {
      yield { op: 'regionWrite', index, offset, data };
      return;
    }
    yield* this.#bar0.write(offset, data);
  }

  /** Size of region `index` (0: not implemented). */
  regionSize(index: number): number {
    return regionSize(this.options, index);
  }

  /** The kick fds to hand out (dups are made of them). */
  kickFds(): number[] {
    this.#checkOpen();
    return this.#kickFds;
  }

  /**
   * A reply carrying the kick fds is on its way to a client: from now on the idle device sleeps on them, polling
   * only at the armed interval. Not before: fds asked for but never sent (a head-only reply, ENOSPC for a client
   * that takes no fds) leave every doorbell to the idle poll, as documented, not to the 10 ms armed poll (a
   * lease's first doorbell on a 1,024-queue simulator waited ~8 ms; issue 16).
   */
  kicksHandedOut(): void {
    if (this.#closed || this.#kicksOut) return;
    // The flag first, so the device reads it when it takes the post below. A device already asleep on its
    // request word only would not hear a kick until its poll interval: the post wakes it, so it goes back to
    // sleep on the kick fds too. Nothing here throws (the reply has gone): a post refused takes the flag back,
    // and the device keeps its idle poll, which serves a holder's doorbells, kicked or not.
    this.#mailbox.kicksHandedOut();
    try {
      this.#mailbox.post({ op: 'kicksHandedOut' });
    } catch {
      this.#mailbox.kicksHandedOut(false);
      return;
    }
    this.#kicksOut = true;
  }

  /** The dma-buf feature (datasheet §8): a new open description of each requested slice's memory. */
  openSlices(payload: Uint8Array): Fd[] {
    this.#checkOpen();
    return this.#slices.open(payload);
  }

  /**
   * The revoke feature (datasheet §8) for a slice fd of any description. A queue page is renewed here first,
   * so its holder's mapping is dead before the worker wakes (page-revoke.ts); the worker then resets the
   * queue and adopts the new memory, and only then is the revoke answered. A device-memory granule, an fd
   * of no current page (already revoked, or no slice: the worker says which), a detach, or a revoke with no
   * spare ready goes to the worker whole, as before.
   */
  revoke(fd: number, fault: boolean): void | Promise<void> {
    this.#checkOpen();
    // A detach (fault false) kills no mapping: nothing to win here, and the worker's order (reset, then let
    // go) leaves the detached holder the page as the reset zeroed it.
    const q = fault ? this.#pages.pageOf(native.fstat(fd).ino) : -1;
    const spare = q >= 0 ? this.#pages.takeSpare() : null;
    if (!spare) return this.#command({ op: 'revoke', fd, fault });
    const oldFd = Atomics.load(this.#sliceFds, sliceFdIndex(this.options, { kind: 'queue', index: q }));
    renewPage(this.#pages, q, oldFd, spare, this.options.queueStride);
    Atomics.store(this.#sliceFds, sliceFdIndex(this.options, { kind: 'queue', index: q }), spare.fd);
    return this.#command({ op: 'pageRenewed', queue: q });
  }

  /**
   * A request waited for as it must be: without blocking this thread while waitsAsync, or behind one waited
   * for so (one command at a time: a blocking one would find the channel busy).
   */
  #command<T = void>(req: DeviceRequest): T | Promise<T> {
    return this.waitsAsyncNow ? this.requestAsync<T>(req) : this.request<T>(req);
  }

  /** waitsAsync, or a command waited for without blocking is still in flight or queued. */
  get waitsAsyncNow(): boolean {
    return this.waitsAsync || this.#mailbox.inFlight !== null;
  }

  /** Until no command waited for without blocking is in flight or queued. */
  async settled(): Promise<void> {
    for (let p = this.#mailbox.inFlight; p; p = this.#mailbox.inFlight) await p;
  }

  /** A fault injection (tests, `--control-stdin`), waited for as #command. */
  inject(req: InjectRequest): void | Promise<void> {
    return this.#command({ op: 'inject', inject: req });
  }

  /** A command waited for without blocking this thread (requestAsync), settled; null when none. */
  get commandInFlight(): Promise<void> | null {
    return this.#mailbox.inFlight;
  }

  request<T = void>(req: DeviceRequest): T {
    this.#checkOpen();
    return this.#mailbox.call<T>(req, this.timeoutMs);
  }

  /**
   * request(), waiting without blocking this thread: for an owner with memory without an fd, whose accesses
   * the device makes through this thread (remote-dma.ts) and could be waiting on.
   */
  requestAsync<T = void>(req: DeviceRequest, posted?: (post: number) => void): Promise<T> {
    this.#checkOpen();
    return this.#mailbox.callAsync<T>(req, this.timeoutMs, posted);
  }

  async stats(): Promise<DeviceStats> {
    const { placed, unplaced } = this.dma.placement.counts;
    // Read before the request: the request wakes the worker, which could make a wanted spare before answering.
    const spareReady = this.#pages.spareReady;
    return {
      ...(await this.#command<WorkerStats>({ op: 'stats' })),
      dmaUnmapCalls: this.dma.unmapCalls,
      dmaMapsPlaced: placed,
      dmaMapsUnplaced: unplaced,
      dmaMapsRemote: this.dma.remoteMaps,
      spareReady,
    };
  }

  /** Stop the device: every DMA mapping and slice memory is dropped. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      // Accesses to the owner fail from now on, so a command waited for without blocking ends; then the
      // shutdown waits as any request.
      this.remote.close();
      await this.settled();
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
