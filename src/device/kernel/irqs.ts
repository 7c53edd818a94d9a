// A kernel device's interrupts: VFIO_DEVICE_GET_IRQ_INFO (asked once per
// index) and VFIO_DEVICE_SET_IRQS (trigger eventfds, disable, unmask).
//
// MSI and MSI-X vectors are wired a few at a time, in any order, also on
// kernels that cannot resize. vfio-pci sizes an MSI or MSI-X index at the
// SET_IRQS that enables it (start + count vectors) and, where its irq info
// says VFIO_IRQ_INFO_NORESIZE (MSI always; MSI-X before Linux 6.5's dynamic
// MSI-X, or where the platform lacks it), refuses every vector past that with
// EINVAL until the index is disabled. The broker wires each lease's vectors
// as its client asks (QEMU: vector 0 first, the rest as its guest unmasks
// them), so on such an index the SET_IRQS that enables it carries the whole
// index: every vector the device has, those not asked for with fd -1.

import { VfioError } from '../../errors.js';
import {
  encodeIrqSet,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  vfio_irq_info,
} from '../../vfio/uapi/index.js';
import type { DeviceIoctl } from './regions.js';

export interface IrqInfo {
  flags: number;
  count: number;
}

export class KernelIrqs {
  readonly #info = new Map<number, IrqInfo>();
  /** NORESIZE indexes enabled by this process (or, adopted, by the one before it). */
  readonly #enabled = new Set<number>();

  constructor(private readonly ioctl: DeviceIoctl) {}

  /** The irq info of `index`, asked of the kernel once (it does not change while the device is open). */
  infoOf(index: number): IrqInfo {
    const known = this.#info.get(index);
    if (known) return known;
    const arg = vfio_irq_info.encode({ argsz: vfio_irq_info.size, index });
    this.ioctl(`VFIO_DEVICE_GET_IRQ_INFO(${index})`, VFIO_DEVICE_GET_IRQ_INFO, arg);
    const { flags, count } = vfio_irq_info.decode(arg);
    this.#info.set(index, { flags, count });
    return { flags, count };
  }

  /** Whether the kernel masks `index` at each interrupt until told to unmask it (vfio-pci's INTx). */
  automasked(index: number): boolean {
    return (this.infoOf(index).flags & VFIO_IRQ_INFO_AUTOMASKED) !== 0;
  }

  /**
   * One SET_IRQS of eventfds (-1: unassign) at `start`: the whole index where it enables a NORESIZE one. The
   * kernel answers an enable it could allocate only part of with the count it could (a positive return, having
   * allocated none): a whole-index enable is asked again at that size when the vectors asked fit in it, and
   * otherwise the call fails ENOSPC, naming the counts.
   */
  set(index: number, start: number, fds: number[]): void {
    // Nothing wired on an index not enabled: nothing to unwire (enabling it whole for that would take every
    // host vector it has, for none).
    if (this.#fixed(index) && !this.#enabled.has(index) && fds.every((fd) => fd < 0)) return;
    let block = this.#block(index, start, fds);
    for (;;) {
      const arg = encodeIrqSet({
        index,
        start: block.start,
        action: 'trigger',
        data: { kind: 'eventfd', fds: block.fds },
      });
      const got = this.ioctl(
        `VFIO_DEVICE_SET_IRQS(${index}, ${block.start}+${block.fds.length})`,
        VFIO_DEVICE_SET_IRQS,
        arg,
      );
      if (got <= 0) break;
      const whole = block.start === 0 && block.fds.length > start + fds.length;
      if (!whole || got < start + fds.length || got >= block.fds.length)
        throw new VfioError(
          'ENOSPC',
          `irq index ${index}: the kernel could allocate ${got} of the ${block.start + block.fds.length} vectors asked (vectors ${start}..${start + fds.length - 1} wanted)`,
        );
      block = { start: 0, fds: block.fds.slice(0, got) };
    }
    if (this.#fixed(index)) this.#enabled.add(index); // enabled: from here on a block at a time
  }

  /** DATA_NONE, count 0: every vector of `index` unwired and the index disabled. */
  disable(index: number): void {
    const arg = encodeIrqSet({ index, start: 0, action: 'trigger', data: { kind: 'none', count: 0 } });
    this.ioctl(`VFIO_DEVICE_SET_IRQS(${index}, disable)`, VFIO_DEVICE_SET_IRQS, arg);
    this.#enabled.delete(index); // the next wiring enables it again, whole
  }

  /** ACTION_UNMASK, DATA_NONE: unmask vector `start` of `index` (an automasked line that fired). */
  unmask(index: number, start: number): void {
    const arg = encodeIrqSet({ index, start, action: 'unmask', data: { kind: 'none', count: 1 } });
    this.ioctl(`VFIO_DEVICE_SET_IRQS(${index}, ${start}, unmask)`, VFIO_DEVICE_SET_IRQS, arg);
  }

  /** Whether `index` is sized once, when enabled (so it is enabled whole). */
  #fixed(index: number): boolean {
    if (index !== VFIO_PCI_MSI_IRQ_INDEX && index !== VFIO_PCI_MSIX_IRQ_INDEX) return false;
    return (this.infoOf(index).flags & VFIO_IRQ_INFO_NORESIZE) !== 0;
  }

  /** The block a SET_IRQS of `fds` (-1: none) at `start` must carry. */
  #block(index: number, start: number, fds: number[]): { start: number; fds: number[] } {
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
