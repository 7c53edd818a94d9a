// A lease's memory without an fd (policy.dma_without_fd = "relay"): the broker maps it on a vfio-user device
// without an fd too, and serves the device's VFIO_USER_DMA_READ / DMA_WRITE into it by sending the same
// command, at the client's own address, to the lease's client (its PeerDma, on the lease connection) — which
// serves it from memory it keeps to itself: QEMU's guest RAM when it is not shared, any client's buffer.
//
// One table per broker, keyed by device IOVA, looked up when an access arrives (never a closure held by the
// device connection): an upgrade hands the device's maps over without their memory, and the next broker
// finds the same leases here once it has adopted them (handover/adopt.ts).
//
// An access is the mapping it found when it arrived, all its pieces: before each piece is sent, that mapping
// must still be the one at its address (not unmapped, not replaced by a new map there), its lease live, its
// client connected. So no piece of a device access is sent to a client after the broker has answered its
// DMA_UNMAP or its lease has ended, whatever the device does (SA-1 also ends such an access itself).
//
// The device waits on the client: one access may take RELAY_ACCESS_MS from its arrival at the broker. A
// client that lets one time out — its own piece's deadline, at least RELAY_MIN_PIECE_MS, passed unanswered —
// gets no access to its memory, each failing at once, until it has answered that one (PeerDma.lateReplies)
// and RELAY_BACKOFF_MS have passed since the timeout: a silent client costs the device one wait, one that is
// always late one wait per RELAY_ACCESS_MS + RELAY_BACKOFF_MS (13 % of its time). An access that waited in
// the broker until too little time was left for the client fails too, charged to no one.
//
// A broker upgrade holds the relay (hold()): accesses arriving then fail (EAGAIN) — the reply would come to a
// process that never asked — and the upgrade waits for those in flight before it pauses anything.

import type { Device } from '../device/device.js';
import { VfioError } from '../errors.js';
import type { DmaMemory } from '../vfio/user/dma-maps.js';
import type { PeerDma } from '../vfio/user/peer-dma.js';
import type { AuditLog } from './audit.js';
import type { Lease, LeaseMapping } from './lease.js';

/**
 * One device access relayed to the client, all its pieces, from its arrival at the broker: under SA-1's 2 s per
 * owner access (the broker is the device's owner), so a client that does not answer is the broker's error
 * reply, and the device's fault, not the device's own timeout.
 */
export const RELAY_ACCESS_MS = 1500;

/** After a client let an access time out, its memory is unreachable this long (and until it answered that one). */
export const RELAY_BACKOFF_MS = 10_000;

/** The least time a piece is sent to the client with; less left, the access fails without asking it. */
export const RELAY_MIN_PIECE_MS = RELAY_ACCESS_MS / 4;

/**
 * The most one relayed DMA_READ/DMA_WRITE carries: QEMU 11.1 stalls for good on a DMA_READ reply over about
 * 214 KiB (docs/PROTOCOL.md, observed); SA-1's own accesses are at most this.
 */
export const RELAY_PIECE = 64 * 1024;

interface Relayed {
  readonly lease: Lease;
  readonly mapping: LeaseMapping;
  /** performance.now() when it was added: an access that arrived before is to whatever was there then. */
  readonly addedAt: number;
}

/** What a lease's relayed memory has cost (`devlease leases`), and when its client may be asked again. */
export interface RelayCounters {
  accesses: number;
  failures: number;
  timeouts: number;
  /** performance.now() before which every access fails (set at a timeout). */
  backoffUntil: number;
}

/** The leases' memory without an fd, by the device IOVA it is mapped at. */
export class DmaRelay {
  readonly #byDeviceIova = new Map<bigint, Relayed>();
  readonly #audit: AuditLog;
  readonly #log: (line: string) => void;
  #inFlight = 0;
  #held = false;

  /** `device` serves its maps without an fd from here (a device that has none: nothing to serve). */
  constructor(device: Device, audit: AuditLog, log: (line: string) => void) {
    if (device.dmaMapWithoutFd) device.relayedMemory = (iova) => this.memoryAt(iova);
    this.#audit = audit;
    this.#log = log;
  }

  get size(): number {
    return this.#byDeviceIova.size;
  }

  /** Device accesses being relayed now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** An upgrade is handing the broker over: accesses arriving fail (EAGAIN) until unheld (a rollback). */
  hold(): void {
    this.#held = true;
  }
  unhold(): void {
    this.#held = false;
  }

  /** Whether a mapping is relayed at `deviceIova` (a second map there is refused before the policy is asked). */
  has(deviceIova: bigint): boolean {
    return this.#byDeviceIova.has(deviceIova);
  }

  /**
   * Before the device's DMA_MAP is sent: the device may access the memory as soon as it has the map. From
   * then on the entry goes with the mapping: when the lease's mappings lose it (an unmap, reclaim), or by
   * remove() if the map fails. EEXIST, nothing changed, if another mapping is relayed at that address (the
   * device would refuse the map: the one there must keep its entry).
   */
  add(lease: Lease, mapping: LeaseMapping): void {
    const there = this.#byDeviceIova.get(mapping.deviceIova);
    if (there && there.mapping !== mapping) {
      throw new VfioError(
        'EEXIST',
        `lease ${there.lease.id} has memory mapped at 0x${mapping.iova.toString(16)} already`,
      );
    }
    if (!there) this.#byDeviceIova.set(mapping.deviceIova, { lease, mapping, addedAt: performance.now() });
    lease.relayCounters ??= { accesses: 0, failures: 0, timeouts: 0, backoffUntil: 0 };
    lease.mappings.onRelayedGone = (m) => this.remove(m);
  }

  /** Only if the entry is still this mapping's (a later map at the same device address keeps its own). */
  remove(mapping: LeaseMapping): void {
    if (this.#byDeviceIova.get(mapping.deviceIova)?.mapping === mapping)
      this.#byDeviceIova.delete(mapping.deviceIova);
  }

  /** What the device connection serves the map at `deviceIova` from (offsets relative to it). */
  memoryAt(deviceIova: bigint): DmaMemory {
    return {
      read: (offset, count, receivedAt) => this.#read(deviceIova, offset, count, receivedAt),
      write: (offset, data, receivedAt) => this.#write(deviceIova, offset, data, receivedAt),
    };
  }

  async #read(deviceIova: bigint, offset: bigint, count: number, receivedAt?: number): Promise<Uint8Array> {
    const out = new Uint8Array(count);
    await this.#pieces(deviceIova, offset, count, receivedAt, async (peer, iova, done, n, ms) => {
      out.set(await peer.read(iova, n, ms), done);
    });
    return out;
  }

  #write(deviceIova: bigint, offset: bigint, data: Uint8Array, receivedAt?: number): Promise<void> {
    return this.#pieces(deviceIova, offset, data.byteLength, receivedAt, (peer, iova, done, n, ms) =>
      peer.write(iova, data.subarray(done, done + n), ms),
    );
  }

  /** One access of `count` bytes at `offset`, piece by piece, each checked just before `send` (see above). */
  async #pieces(
    deviceIova: bigint,
    offset: bigint,
    count: number,
    receivedAt: number | undefined,
    send: (peer: PeerDma, iova: bigint, done: number, n: number, ms: number) => Promise<void>,
  ): Promise<void> {
    const access = this.#begin(deviceIova, offset, receivedAt);
    try {
      for (let done = 0; done < count; ) {
        const { peer, iova, ms } = this.#piece(access, offset + BigInt(done));
        const n = Math.min(RELAY_PIECE, peer.maxTransfer, count - done);
        access.charged = true; // a timeout now is the client's own
        await send(peer, iova, done, n, ms);
        access.charged = false;
        done += n;
      }
    } catch (err) {
      throw this.#failed(access, err);
    } finally {
      this.#inFlight--;
    }
  }

  /** The mapping an access arriving now is to, and its deadline; EFAULT if there is none. Counted in flight. */
  #begin(deviceIova: bigint, offset: bigint, receivedAt = performance.now()): Access {
    const at = `device address 0x${(deviceIova + offset).toString(16)}`;
    if (this.#held)
      throw new VfioError('EAGAIN', `the broker is being upgraded: no relayed access at ${at} now`);
    const r = this.#byDeviceIova.get(deviceIova);
    // Queued in the broker since before this mapping was made: it was meant for one unmapped since.
    if (!r || receivedAt < r.addedAt) throw new VfioError('EFAULT', `no lease memory is mapped at ${at}`);
    r.lease.relayCounters!.accesses++;
    this.#inFlight++;
    return { ...r, deviceIova, deadline: receivedAt + RELAY_ACCESS_MS, charged: false };
  }

  /** Whom to send the piece at `offset` of the access, at which client address, with how long left; or why not. */
  #piece(a: Access, offset: bigint): { peer: PeerDma; iova: bigint; ms: number } {
    const { lease, mapping } = a;
    const where = `lease ${lease.id}'s memory at 0x${(mapping.iova + offset).toString(16)}`;
    // Unmapped, or mapped anew at the same address (a new mapping object), since the access arrived.
    if (this.#byDeviceIova.get(a.deviceIova)?.mapping !== mapping)
      throw new VfioError('EFAULT', `${where} was unmapped during the device's access`);
    if (!lease.live) throw new VfioError('EFAULT', `${where}: the lease is ${lease.state}`);
    const peer = lease.peer;
    if (!peer) throw new VfioError('EFAULT', `${where}: its client is not connected`);
    const c = lease.relayCounters!;
    if (peer.lateReplies > 0 || performance.now() < c.backoffUntil) {
      throw new VfioError('EFAULT', `${where}: its client let an access time out and is not asked again yet`);
    }
    const ms = a.deadline - performance.now();
    if (ms < RELAY_MIN_PIECE_MS) {
      // The access waited in the broker (behind another lease's, or for the device to read our replies).
      throw new VfioError(
        'ETIMEDOUT',
        `${where}: the device's access waited ${Math.round(RELAY_ACCESS_MS - ms)} ms before its piece could be sent; too late`,
      );
    }
    return { peer, iova: mapping.iova + offset, ms };
  }

  /** Counts a failed access; the client's own timeout starts its backoff and is reported. */
  #failed(a: Access, err: unknown): unknown {
    const c = a.lease.relayCounters!;
    c.failures++;
    if ((err as { code?: string })?.code === 'ETIMEDOUT' && a.charged) {
      c.timeouts++;
      c.backoffUntil = performance.now() + RELAY_BACKOFF_MS;
      // At most once per RELAY_BACKOFF_MS per lease: the backoff fails every access meanwhile at once.
      const { lease } = a;
      const reason = (err as Error).message;
      this.#audit.write({ event: 'relay-timeout', lease: lease.id, pid: lease.ctx.pid, reason });
      this.#log(
        `lease ${lease.id}: ${reason}; its memory is not reached for the next ${RELAY_BACKOFF_MS} ms`,
      );
    }
    return err;
  }
}

interface Access extends Relayed {
  readonly deviceIova: bigint;
  /** performance.now() by which all of it must be served. */
  readonly deadline: number;
  /** A piece is out to the client, sent with enough time: a timeout now is the client's. */
  charged: boolean;
}
