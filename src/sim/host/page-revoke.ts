// A queue page's revoke, started on the simulator's front end so that the
// holder's mapping dies without waiting for the device worker to wake
// (issue 16; docs/SA-1.md "Revoke: the holder's mapping dies on the front
// end"). The worker keeps a spare memfd ready (made again once the device
// is quiet after a revoke took it, not inside the revoke); the front end maps
// it over the worker's view of the page in one MAP_FIXED (threads share the
// address space, so the engine reads the old page or the new one, never a hole),
// publishes it as the page's memory, truncates the old memfd (every other
// mapping of it now faults) and only then asks the worker to reset the queue
// and take ownership (a request: the revoke is still answered after the
// reset, as before). Without a spare, for a device-memory granule, or for a
// detach (no mapping to kill), the worker does it all as before.

import { native } from '../../sys/index.js';
import { QP_REGISTERS_END } from '../model/datasheet.js';

/**
 * Shared between the worker (which publishes) and the front end (which reads and takes the spare):
 * Int32 word 0 the spare memfd number (-1: none); then BigInt64 words: the spare's inode, and per queue page
 * the worker's mapping address and the current memfd's inode.
 */
export class PageTable {
  readonly #i32: Int32Array;
  readonly #big: BigInt64Array;

  static memory(numQueues: number): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(8 + 8 * (1 + 2 * numQueues));
    new Int32Array(sab, 0, 1)[0] = -1;
    return sab;
  }

  constructor(sab: SharedArrayBuffer) {
    this.#i32 = new Int32Array(sab, 0, 1);
    this.#big = new BigInt64Array(sab, 8);
  }

  get numQueues(): number {
    return (this.#big.length - 1) / 2;
  }

  /** Worker: queue page q is mapped at `address` from a memfd with inode `ino`. */
  publishPage(q: number, address: bigint, ino: bigint): void {
    Atomics.store(this.#big, 1 + 2 * q, address);
    Atomics.store(this.#big, 2 + 2 * q, ino);
  }

  /** Worker: `fd` (inode `ino`, a queue page's size) is the next page's memory; -1 withdraws it. */
  offerSpare(fd: number, ino = 0n): void {
    Atomics.store(this.#big, 0, ino);
    Atomics.store(this.#i32, 0, fd); // last: the front end reads the inode after taking the number
  }

  /** Front end: the queue page whose current memory has inode `ino`, or -1. */
  pageOf(ino: bigint): number {
    for (let q = 0; q < this.numQueues; q++) if (Atomics.load(this.#big, 2 + 2 * q) === ino) return q;
    return -1;
  }

  address(q: number): bigint {
    return Atomics.load(this.#big, 1 + 2 * q);
  }

  /** Front end: a spare is offered (takeSpare would return it). */
  get spareReady(): boolean {
    return Atomics.load(this.#i32, 0) >= 0;
  }

  /** Front end: take the spare (the worker adopts it in the request that follows), or null. */
  takeSpare(): { fd: number; ino: bigint } | null {
    const fd = Atomics.exchange(this.#i32, 0, -1);
    return fd < 0 ? null : { fd, ino: Atomics.load(this.#big, 0) };
  }

  /** Front end: give back a spare it could not use. */
  returnSpare(spare: { fd: number; ino: bigint }): void {
    this.offerSpare(spare.fd, spare.ino);
  }
}

/**
 * Front end: renew queue page q's memory with the spare and kill every other mapping of the old memory.
 * `oldFd` is the worker's memfd of the page (the worker closes it when it adopts the spare; it cannot do so
 * before, since it serves one request at a time and this thread asks it next). The ring registers are copied
 * into the fresh page first, so an engine in the middle of a round reads the doorbell it read before (a
 * zeroed SQ_TAIL would look like a doorbell run backwards: BAD_QUEUE_CONFIG); the reset that follows zeroes
 * the page. Throws (the spare given back) if the page could not be replaced; nothing changed then.
 */
export function renewPage(
  table: PageTable,
  q: number,
  oldFd: number,
  spare: { fd: number; ino: bigint },
  length: number,
): void {
  try {
    const regs = new Uint8Array(QP_REGISTERS_END);
    native.pread(oldFd, regs, 0);
    native.pwrite(spare.fd, regs, 0);
    native.guardReplaceAt(table.address(q), length, spare.fd);
  } catch (err) {
    table.returnSpare(spare);
    throw err;
  }
  table.publishPage(q, table.address(q), spare.ino);
  native.ftruncate(oldFd, 0);
}
