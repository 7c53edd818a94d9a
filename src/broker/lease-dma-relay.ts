// A lease's memory without an fd (policy.dma_without_fd = "relay"): the broker maps it on a vfio-user device
// without an fd too, and serves the device's VFIO_USER_DMA_READ / DMA_WRITE into it by sending the same
// command, at the client's own address, to the lease's client (its PeerDma, on the lease connection) — which
// serves it from memory it keeps to itself: QEMU's guest RAM when it is not shared, any client's buffer.
//
// One table per broker, keyed by device IOVA, looked up at every access (never a closure held by the
// device connection): an upgrade hands the device's maps over without their memory, and the next broker
// finds the same leases here once it has adopted them (handover/adopt.ts).
//
// A client that does not answer in RELAY_ACCESS_MS fails that access; until its late answer comes, every
// access to its memory fails at once (PeerDma.lateReplies): the device waits on a silent client once.
//
// What an access may do is checked piece by piece, just before each piece is sent: the lease live, this
// mapping still the lease's, its client connected. So once the broker has answered a client's DMA_UNMAP (or
// its lease ended), nothing more of a device access reaches that client's memory — the device's own unmap
// ends such an access too (SA-1: docs/SA-1.md, "Owner memory without an fd"), this holds for any device.

import { VfioError } from '../errors.js';
import type { DmaMemory } from '../vfio/user/dma-maps.js';
import type { PeerDma } from '../vfio/user/peer-dma.js';
import type { Lease, LeaseMapping } from './lease.js';

/**
 * One device access relayed to the client, all its pieces: under SA-1's 2 s per owner access (the broker is
 * the device's owner), so a client that does not answer is the broker's error reply, and the device's fault,
 * not the device's own timeout.
 */
export const RELAY_ACCESS_MS = 1500;

/**
 * The most one relayed DMA_READ/DMA_WRITE carries: QEMU 11.1 stalls for good on a DMA_READ reply over about
 * 214 KiB (docs/PROTOCOL.md, observed); SA-1's own accesses are at most this.
 */
export const RELAY_PIECE = 64 * 1024;

interface Relayed {
  readonly lease: Lease;
  readonly mapping: LeaseMapping;
}

/** The leases' memory without an fd, by the device IOVA it is mapped at. */
export class DmaRelay {
  readonly #byDeviceIova = new Map<bigint, Relayed>();

  get size(): number {
    return this.#byDeviceIova.size;
  }

  /**
   * Before the device's DMA_MAP is sent: the device may access the memory as soon as it has the map. From
   * then on the entry goes with the mapping: when the lease's mappings lose it (an unmap, reclaim), or by
   * remove() if the map fails.
   */
  add(lease: Lease, mapping: LeaseMapping): void {
    this.#byDeviceIova.set(mapping.deviceIova, { lease, mapping });
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
      read: (offset, count) => this.#read(deviceIova, offset, count),
      write: (offset, data) => this.#write(deviceIova, offset, data),
    };
  }

  async #read(deviceIova: bigint, offset: bigint, count: number): Promise<Uint8Array> {
    const deadline = Date.now() + RELAY_ACCESS_MS;
    const out = new Uint8Array(count);
    for (let done = 0; done < count; ) {
      const { peer, iova } = this.#usable(deviceIova, offset + BigInt(done));
      const n = Math.min(RELAY_PIECE, peer.maxTransfer, count - done);
      out.set(await peer.read(iova, n, left(deadline, deviceIova)), done);
      done += n;
    }
    return out;
  }

  async #write(deviceIova: bigint, offset: bigint, data: Uint8Array): Promise<void> {
    const deadline = Date.now() + RELAY_ACCESS_MS;
    for (let done = 0; done < data.byteLength; ) {
      const { peer, iova } = this.#usable(deviceIova, offset + BigInt(done));
      const n = Math.min(RELAY_PIECE, peer.maxTransfer, data.byteLength - done);
      await peer.write(iova, data.subarray(done, done + n), left(deadline, deviceIova));
      done += n;
    }
  }

  /** The client to ask and its address for `offset` into the map at `deviceIova`, or why not (EFAULT). */
  #usable(deviceIova: bigint, offset: bigint): { peer: PeerDma; iova: bigint } {
    const r = this.#byDeviceIova.get(deviceIova);
    const where = `0x${(deviceIova + offset).toString(16)}`;
    if (!r) throw new VfioError('EFAULT', `no lease memory is mapped at device address ${where}`);
    const { lease, mapping } = r;
    if (!lease.live)
      throw new VfioError(
        'EFAULT',
        `lease ${lease.id} is ${lease.state}: its memory at ${where} is not reachable`,
      );
    const peer = lease.peer;
    if (!peer) throw new VfioError('EFAULT', `lease ${lease.id}'s client is not connected`);
    // A client that let an access time out is not asked again until it has answered that one (late): so a
    // client that stopped answering costs the device one wait, not one per access while it is silent.
    if (peer.lateReplies > 0) {
      throw new VfioError(
        'EFAULT',
        `lease ${lease.id}'s client has not answered an access that timed out: the device's accesses to its memory fail until it does`,
      );
    }
    return { peer, iova: mapping.iova + offset };
  }
}

function left(deadline: number, deviceIova: bigint): number {
  const ms = deadline - Date.now();
  if (ms <= 0) {
    throw new VfioError(
      'ETIMEDOUT',
      `the lease's client did not serve the device's access at 0x${deviceIova.toString(16)} in ${RELAY_ACCESS_MS} ms`,
    );
  }
  return ms;
}
