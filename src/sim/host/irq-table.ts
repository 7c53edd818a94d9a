// The eventfd numbers the device signals, per VFIO irq index and vector, in
// memory both threads share: the front end serves SET_IRQS by storing the
// new numbers here (no round trip to the device worker), and the worker
// reads the number each time it delivers an interrupt.
//
// The front end owns the Fd objects and closes an old one after switching.
// An eventfd number closed while the worker is between loading it and
// writing it could be reused by another file, so delivery is bracketed by a
// counter the worker makes odd before the load and even after the write;
// after storing new numbers the front end waits (microseconds: one
// eventfd_write) only while that counter shows a delivery in progress.

import { VfioError } from '../../errors.js';
import { native } from '../../sys/native.js';
import {
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
} from '../../vfio/uapi/vfio.js';

/** Word 0: the delivery counter (odd while a delivery is in progress). */
const W_DELIVERING = 0;
const FIRST_SLOT = 1;

export class IrqTable {
  readonly #w: Int32Array;
  readonly #msix: number;

  static memory(numQueues: number): SharedArrayBuffer {
    const sab = new SharedArrayBuffer((FIRST_SLOT + numQueues + 3) * 4);
    new Int32Array(sab).fill(-1, FIRST_SLOT);
    return sab;
  }

  constructor(sab: SharedArrayBuffer, numQueues: number) {
    this.#w = new Int32Array(sab);
    this.#msix = numQueues + 1;
  }

  /** Vectors of irq `index` (0: none). */
  count(index: number): number {
    if (index === VFIO_PCI_MSIX_IRQ_INDEX) return this.#msix;
    return index === VFIO_PCI_ERR_IRQ_INDEX || index === VFIO_PCI_REQ_IRQ_INDEX ? 1 : 0;
  }

  #slot(index: number, vector: number): number {
    if (vector < 0 || vector >= this.count(index)) return -1;
    if (index === VFIO_PCI_MSIX_IRQ_INDEX) return FIRST_SLOT + vector;
    return FIRST_SLOT + this.#msix + (index === VFIO_PCI_ERR_IRQ_INDEX ? 0 : 1);
  }

  /** Worker: signal the eventfd of (index, vector), if one is set. */
  deliver(index: number, vector: number): void {
    const slot = this.#slot(index, vector);
    if (slot < 0) return;
    const w = this.#w;
    Atomics.add(w, W_DELIVERING, 1);
    try {
      const fd = Atomics.load(w, slot);
      if (fd >= 0) native.eventfdWrite(fd, 1);
    } catch {
      // A full counter (EAGAIN) already says "interrupt pending"; nothing else can fail on an eventfd.
    } finally {
      Atomics.add(w, W_DELIVERING, 1);
    }
  }

  /**
   * Front end: store `fds` (-1: none) for vectors start.. of irq `index`, then wait until no delivery that
   * could have loaded an old number is still in progress, so the caller may close the old fds.
   */
  set(index: number, start: number, fds: number[]): void {
    if (start < 0 || start + fds.length > this.count(index)) {
      throw new VfioError('EINVAL', `irq ${index} range`);
    }
    for (let i = 0; i < fds.length; i++)
      Atomics.store(this.#w, this.#slot(index, start + i), fds[i] as number);
    this.#settle();
  }

  /** Front end: every vector of every index to none (the owner left), then settle as set() does. */
  clear(): void {
    this.#w.fill(-1, FIRST_SLOT);
    Atomics.store(this.#w, W_DELIVERING, Atomics.load(this.#w, W_DELIVERING)); // order the fill first
    this.#settle();
  }

  /**
   * Sequentially consistent against deliver(): it makes the counter odd, then loads the number; we stored
   * the number, then load the counter. Even: any delivery after this sees the new number. Odd: wait for
   * that one delivery to end (the counter moves); a later one loads the new number.
   */
  #settle(): void {
    const seen = Atomics.load(this.#w, W_DELIVERING);
    if ((seen & 1) === 0) return;
    const deadline = performance.now() + 1000;
    while (Atomics.load(this.#w, W_DELIVERING) === seen) {
      // The worker holds the number for one eventfd_write; only a descheduled worker takes longer.
      if (performance.now() > deadline) throw new VfioError('EIO', 'device stuck delivering an interrupt');
      Atomics.wait(this.#w, W_DELIVERING, seen, 0.05);
    }
  }
}
