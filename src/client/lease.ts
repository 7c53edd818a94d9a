// The client side of a lease: a vfio-user connection to the broker's socket
// for a lease kind, the lease's regions mapped (guarded, so a revocation
// reads as revoked instead of killing the process), DMA memory, interrupts
// and notices. Its interrupt vectors are lease-vectors.ts, the device's ioeventfds io-event-fds.ts.
//
//   await using lease = await connect({ socket, request: { devmemGranules: 1 } });

import { EventEmitter } from 'node:events';
// The sys modules a lease uses, not the barrel (sys/index.js): it also loads the broker's server, pidfd, inotify
// and seqpacket modules, each a cost at a client process's start (issue 16).
import { EventFd } from '../sys/eventfd.js';
import type { Fd } from '../sys/fd.js';
import { Mapping } from '../sys/mapping.js';
import {
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../vfio/uapi/vfio.js';
import { VfioUserClient } from '../vfio/user/client.js';
import { DmaPool } from './dma.js';
import { fromCallError, leaseError } from './errors.js';
import { type LeaseInfo, noticeIrqOf, parseLeaseInfo, readInfoRegion } from './info.js';
import { IoEventFds } from './io-event-fds.js';
import { LeaseVectors } from './lease-vectors.js';

export interface ConnectOptions {
  /** The broker's socket for the lease kind, e.g. /run/devlease/sa1/queue.sock. */
  socket: string;
  /** Kind-specific request, e.g. { devmemGranules: 1 }. */
  request?: Record<string, unknown>;
  /** Timeout of each control call (ms). Default 5000. */
  timeoutMs?: number;
  /**
   * Resolve once the broker has answered VERSION and the setup requests (regions, interrupts) are sent,
   * without waiting for their replies: `lease.ready` says when they are in. What is asked of the lease
   * before that (Sa1Queue.create, dma.alloc, ioEventFd) goes out behind them, in the same round trip.
   * region() needs `await lease.ready` first. A setup failure rejects `ready` and closes the lease.
   */
  deferSetup?: boolean;
}

/**
 * Events:
 * - 'interrupt' (vector: number, count: bigint)
 * - 'revoke-requested' ({ deadline: number }): the owner wants the lease back; close() before the deadline
 * - 'revoked': the lease was taken back (slices dead, session closed)
 * - 'device-fault' (faults, missed): fault records concerning this lease, the new ones the info still holds;
 *   `missed`: how many more there were, older than those and no longer kept (the broker keeps the last 16)
 * - 'device-reset': the device was reset, or its server went away (the broker reconnects to it); the lease
 *   is gone: connect again for a new one (refused with ENODEV while the device is away)
 * - 'disconnected' (reason): the session ended for any reason
 */
export class Lease extends EventEmitter {
  readonly client: VfioUserClient;
  info: LeaseInfo;
  readonly dma: DmaPool;
  readonly #regions = new Map<number, Mapping>();
  readonly #vectors = new LeaseVectors((vector, count) => this.emit('interrupt', vector, count));
  readonly #notices: EventFd[] = [];
  /** ioeventfds asked for with ioEventFd() (closed with the lease). */
  readonly #ioEventFds: IoEventFds;
  /** The ERR notice's eventfd (device fault or reset), read once more when the session ends. */
  #errNotice: EventFd | null = null;
  readonly #infoIndex: number;
  /** devlease's notice irq index (VERSION), or null: none offered. */
  readonly #noticeIrq: number | null;
  /** Faults already reported (the info's faultsTotal), so a later ERR without a new fault is seen as a reset. */
  #faultsSeen = 0;
  #closed = false;
  /** A region was mapped from a device fd handed over for an audited slice. */
  #audited = false;

  private constructor(client: VfioUserClient, info: LeaseInfo, infoIndex: number, noticeIrq: number | null) {
    super();
    this.client = client;
    this.info = info;
    this.#infoIndex = infoIndex;
    this.#noticeIrq = noticeIrq;
    this.dma = new DmaPool(client, info.iovaWindow ?? { base: 0n, size: 0n }, info.lease);
    this.#ioEventFds = new IoEventFds(client, () => this.#closed);
    client.on('close', () => this.#onDisconnect());
  }

  static async connect(opts: ConnectOptions): Promise<Lease> {
    let client: VfioUserClient;
    try {
      client = await VfioUserClient.connect(opts.socket, {
        timeoutMs: opts.timeoutMs ?? 5000,
        capabilities: { devlease: { request: opts.request ?? {} } },
      });
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ENOENT' || code === 'ECONNREFUSED') {
        throw leaseError(code, `no broker is listening on ${opts.socket}`, err);
      }
      throw fromCallError('lease refused', err);
    }
    let lease: Lease | null = null;
    try {
      const ext = client.serverCapabilities.raw.devlease as
        | { infoRegion?: number; info?: unknown; noticeIrq?: unknown }
        | undefined;
      const infoIndex = ext?.infoRegion ?? 9;
      const noticeIrq = noticeIrqOf(ext);
      // The broker sends the info as granted with VERSION; an older one only has it in the info region.
      const info = parseLeaseInfo(ext?.info ?? (await readInfoRegion(client, infoIndex)));
      lease = new Lease(client, info, infoIndex, noticeIrq);
      const calls = lease.#startSetup();
      if (opts.deferSetup) {
        const l = lease;
        l.#ready = l.#finishSetup(calls).catch((err: unknown) => {
          l.close();
          throw fromCallError('lease setup failed', err);
        });
        l.#ready.catch(() => undefined); // a caller that never awaits ready sees the failure as a closed lease
        return l;
      }
      await lease.#finishSetup(calls);
      return lease;
    } catch (err) {
      // Whatever setup made (mappings, eventfds and their watchers) goes too, not just the connection.
      if (lease) lease.close();
      else client.close();
      throw fromCallError('lease setup failed', err);
    }
  }

  /**
   * Sends every setup request at once: the broker serves them in order, so the client waits for one round
   * trip instead of one per request. Whatever comes back is owned (and closed) by the lease.
   */
  #startSetup(): Promise<unknown>[] {
    const calls: Promise<unknown>[] = [];
    try {
      this.#sendSetup(calls);
    } catch (err) {
      // A request could not be made (an eventfd or its watch refused, ENOMEM/EMFILE): those already sent
      // end with the connection, which connect() now closes; nobody awaits them, so their rejections are
      // taken here (unhandled, they were a process-level crash — found by the fail-nth suite).
      for (const c of calls) c.catch(() => undefined);
      throw err;
    }
    return calls;
  }

  async #finishSetup(calls: Promise<unknown>[]): Promise<void> {
    const settled = await Promise.allSettled(calls);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    // An audited slice's device fd is closed by now: one more request tells the broker so, and its audit
    // then holds this process to it (without it, the broker waits out its hand-off grace).
    if (this.#audited) await this.client.deviceInfo();
    this.#setupDone = true;
  }

  /**
   * Resolves once the lease's setup replies are in (regions mapped, interrupts wired): at once unless
   * connect() was given `deferSetup`. Rejects with the setup's failure (the lease is closed then).
   */
  get ready(): Promise<void> {
    return this.#ready;
  }
  #ready: Promise<void> = Promise.resolve();
  #setupDone = false;

  /**
   * Sends every setup request, pushing each reply's promise onto `calls`. The interrupts go first and the
   * regions last: the broker answers in request order and relays the MSI-X vectors to the device, so every
   * reply is then sent in one turn after that relay and this process reads them in one wake-up (regions
   * first, the region's fd-carrying reply came alone, ahead of the relay: two wake-ups per lease; issue 16).
   */
  #sendSetup(calls: Promise<unknown>[]): void {
    this.#vectors.wire(this.client, this.info.vectors, calls);
    // devlease's notice irq (docs/PROTOCOL.md), when the broker offers it: per-queue faults arrive there.
    const noticeIrq = this.#noticeIrq === null ? [] : [this.#noticeIrq];
    for (const index of [VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX, ...noticeIrq]) {
      const efd = new EventFd();
      this.#notices.push(efd);
      if (index === VFIO_PCI_ERR_IRQ_INDEX) this.#errNotice = efd;
      efd.onReadable(() => void this.#notice(index), 'shared'); // rarely fires: one epoll_ctl in, one out
      calls.push(
        this.client.setIrqs({
          flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
          index,
          start: 0,
          count: 1,
          fds: [efd.fd],
        }),
      );
    }
    for (const r of this.info.regions) {
      calls.push(
        this.client.regionInfo(r.index).then((ri) => {
          if (!ri.fd) return; // mediated region: reach it with regionRead/regionWrite
          try {
            if (!this.#closed) {
              // At the region's offset on the fd: 0 for a slice fd, the VFIO region offset of the slice for
              // the device fd of an audited slice (which this closes below, before connect() returns).
              const offset = Number(ri.offset);
              this.#regions.set(
                r.index,
                Mapping.map(ri.fd, { length: Number(ri.size), offset, guard: true }),
              );
              if (offset !== 0) this.#audited = true;
            }
          } finally {
            ri.fd.close(); // the mapping keeps the description alive; its release is what the broker watches
          }
        }),
      );
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * True for the first caller only: the queue helper that may find the queue as the grant left it (reset,
   * enabled, nothing rung) and so skip its own reset. Every later helper resets.
   */
  claimFresh(): boolean {
    const fresh = this.#fresh;
    this.#fresh = false;
    return fresh;
  }
  #fresh = true;

  /** The mapped slice of lease region `index` (e.g. 2: the SA-1 queue page). */
  region(index: number): Mapping {
    this.#checkOpen();
    const m = this.#regions.get(index);
    if (!m && !this.#setupDone)
      throw leaseError(
        'ERR_DEVLEASE_NOT_READY',
        `lease region ${index}: await lease.ready first (deferSetup)`,
      );
    if (!m)
      throw leaseError(
        'ENOENT',
        `lease region ${index} is not mapped (regions: ${[...this.#regions.keys()].join(', ') || 'none'})`,
      );
    return m;
  }

  /** True once any mapped slice of this lease has been revoked by the device. */
  get revoked(): boolean {
    return [...this.#regions.values()].some((m) => m.isRevoked());
  }

  /** Re-read the info region (state, deadline, faults). */
  async refreshInfo(): Promise<LeaseInfo> {
    this.#checkOpen();
    this.info = parseLeaseInfo(await readInfoRegion(this.client, this.#infoIndex));
    return this.info;
  }

  /** Interrupts of any vector, as an async iterator with its own buffer (ends when the lease closes). */
  async *interrupts(): AsyncGenerator<number> {
    const queued: number[] = [];
    let wake: (() => void) | null = null;
    const onIrq = (v: number) => {
      queued.push(v);
      wake?.();
    };
    const onEnd = () => wake?.();
    this.on('interrupt', onIrq);
    this.on('disconnected', onEnd);
    try {
      while (!this.#closed || queued.length) {
        const v = queued.shift();
        if (v !== undefined) yield v;
        else await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    } finally {
      this.off('interrupt', onIrq);
      this.off('disconnected', onEnd);
    }
  }

  /** The next interrupt on any vector; rejects when the lease closes first. */
  nextInterrupt(): Promise<number> {
    if (this.#closed) return Promise.reject(leaseError('ERR_DEVLEASE_CLOSED', 'the lease is closed'));
    return this.#vectors.next();
  }

  /** Ask the broker to reset this lease's queue (after an error). */
  async resetQueue(): Promise<void> {
    this.#checkOpen();
    this.#fresh = false;
    try {
      await this.client.reset();
    } catch (err) {
      throw fromCallError('queue reset', err);
    }
  }

  async #notice(index: number): Promise<void> {
    if (this.#closed) return;
    // Read from its eventfd, not yet reported: a hang-up meanwhile reports it (#onDisconnect), in order.
    const unreported =
      index === VFIO_PCI_ERR_IRQ_INDEX ? 'err' : index === VFIO_PCI_REQ_IRQ_INDEX ? 'req' : null;
    if (unreported) this.#unreported[unreported]++;
    const info = await this.refreshInfo().catch(() => null);
    if (unreported) this.#unreported[unreported]--;
    if (this.#closed) return;
    if (index === VFIO_PCI_REQ_IRQ_INDEX) {
      this.emit('revoke-requested', { deadline: info?.deadline ?? Date.now() });
    } else if (info && info.faultsTotal > this.#faultsSeen) {
      // Counted by the total, not by the list: the list stops growing at 16, and two faults may arrive
      // between reads.
      const fresh = info.faultsTotal - this.#faultsSeen;
      const held = Math.min(fresh, info.faults.length);
      this.emit('device-fault', info.faults.slice(info.faults.length - held), fresh - held);
      this.#faultsSeen = info.faultsTotal;
    } else if (index === VFIO_PCI_ERR_IRQ_INDEX) {
      this.emit('device-reset');
    }
  }

  /** ERR and REQ notices read whose info refresh is still out (#notice): two may overlap. */
  readonly #unreported = { err: 0, req: 0 };

  #onDisconnect(): void {
    if (this.#closed) return;
    // A revoke notice read and not yet reported: the hang-up is its end.
    const wasRevoking = this.info.state === 'revoking' || this.revoked || this.#unreported.req > 0;
    // On a device hang or reset the broker signals ERR and closes the session at once: when the hang-up is
    // seen first, the notice still sits in its eventfd. Report it, or the client would hear only 'disconnected'.
    let errPending: bigint | null = null;
    try {
      errPending = this.#errNotice && !this.#errNotice.closed ? this.#errNotice.read() : null;
    } catch {
      // The read failed (ENOMEM): whether a reset notice was pending cannot be known. The lease is over
      // either way and 'disconnected' says so; thrown from here it was an uncaught exception in the
      // connection's close handler (the fail-nth walk of revoke), and the lease was never torn down.
    }
    this.#teardown();
    if (errPending || this.#unreported.err > 0) this.emit('device-reset');
    if (wasRevoking) this.emit('revoked');
    this.emit('disconnected', 'the broker closed the session');
  }

  #checkOpen(): void {
    if (this.#closed) throw leaseError('ERR_DEVLEASE_CLOSED', `lease ${this.info.lease} is closed`);
  }

  /**
   * The ioeventfd the device offers for `offset` of `region` (VFIO_USER_DEVICE_GET_REGION_IO_FDS; SA-1
   * rev 2: a queue page's doorbell kick at SQ_TAIL), or null when it offers none there (an older device,
   * a kernel device: ENOTSUP). Asked once; the lease keeps the fd and closes it when it closes.
   */
  ioEventFd(region: number, offset: number): Promise<Fd | null> {
    return this.#ioEventFds.get(region, offset);
  }

  #teardown(): void {
    this.#closed = true;
    this.#ioEventFds.closeAll();
    for (const m of this.#regions.values()) m.unmap();
    this.#regions.clear();
    this.#vectors.closeFds();
    for (const e of this.#notices) e.close();
    this.#notices.length = 0;
    this.#errNotice = null;
    this.dma.dropAll();
    this.#vectors.rejectWaiters();
    this.client.close();
  }

  /** Release everything: the broker reclaims the lease when the session closes. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#teardown();
  }
  [Symbol.dispose](): void {
    this.close();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

export const connect = (opts: ConnectOptions): Promise<Lease> => Lease.connect(opts);
