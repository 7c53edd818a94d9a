// MSI and MSI-X vectors wired a few at a time, in any order, on kernels that
// cannot resize. vfio-pci sizes an MSI or MSI-X index at the SET_IRQS that
// enables it (start + count vectors) and, where its irq info says
// VFIO_IRQ_INFO_NORESIZE (MSI always; MSI-X before Linux 6.5's dynamic MSI-X,
// or where the platform lacks it), refuses every vector past that with EINVAL
// until the index is disabled. The broker wires each lease's vectors as its
// client asks (QEMU: vector 0 first, the rest as its guest unmasks them), so
// on such an index the SET_IRQS that enables it carries the whole index:
// every vector the device has, those not asked for with fd -1 (no eventfd).

import { VfioError } from '../../errors.js';
import {
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from '../../vfio/uapi/vfio.js';

export interface IrqInfo {
  flags: number;
  count: number;
}

export class IrqBlocks {
  readonly #info = new Map<number, IrqInfo>();
  /** NORESIZE indexes enabled by this process (or, adopted, by the one before it). */
  readonly #enabled = new Set<number>();

  /** `info` asks the kernel (VFIO_DEVICE_GET_IRQ_INFO); each index is asked once. */
  constructor(private readonly info: (index: number) => IrqInfo) {}

  /** The irq info of `index`, asked of the kernel once (it does not change while the device is open). */
  infoOf(index: number): IrqInfo {
    let i = this.#info.get(index);
    if (!i) {
      i = this.info(index);
      this.#info.set(index, i);
    }
    return i;
  }

  /** Whether `index` is sized once, when enabled (so it is enabled whole). */
  #fixed(index: number): boolean {
    if (index !== VFIO_PCI_MSI_IRQ_INDEX && index !== VFIO_PCI_MSIX_IRQ_INDEX) return false;
    return (this.infoOf(index).flags & VFIO_IRQ_INFO_NORESIZE) !== 0;
  }

  /** The block a SET_IRQS of `fds` (-1: none) at `start` must carry. */
  block(index: number, start: number, fds: number[]): { start: number; fds: number[] } {
    if (!this.#fixed(index) || this.#enabled.has(index)) return { start, fds };
    const { count } = this.infoOf(index);
    if (start + fds.length > count)
      throw new VfioError(
        'EINVAL',
        `irq index ${index} has ${count} vectors: vectors ${start}..${start + fds.length - 1} are not among them`,
      );
    const whole = Array<number>(count).fill(-1);
    fds.forEach((fd, i) => {
      whole[start + i] = fd;
    });
    return { start: 0, fds: whole };
  }

  /** A SET_IRQS with eventfds on `index` succeeded: the index is enabled. */
  wired(index: number): void {
    if (this.#fixed(index)) this.#enabled.add(index);
  }

  /** `index` was disabled (DATA_NONE, count 0): the next wiring enables it again, whole. */
  disabled(index: number): void {
    this.#enabled.delete(index);
  }

  /** What an upgrade carries: the NORESIZE indexes enabled. */
  handover(): number[] {
    return [...this.#enabled];
  }

  /**
   * Adopted from the previous broker: the indexes it had enabled. Not told (a broker before this one): every
   * MSI and MSI-X index is taken as enabled, since enabling one again whole would unwire the vectors the
   * previous broker's leases have (fd -1); a vector past the first size then fails as it always did.
   */
  adopt(enabled: number[] | undefined): void {
    for (const i of enabled ?? [VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX]) this.#enabled.add(i);
  }
}
