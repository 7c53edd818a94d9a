// MSI-X in a lease device, so a stock vfio-user client (QEMU's
// vfio-user-pci) finds its interrupts as on a real function: the lease's
// config space gets a capability list with one MSI-X capability sized to the
// lease's vectors, and the table and PBA live in a BAR of their own that is
// trapped — REGION_READ/WRITE through the broker, never mmap-able — so QEMU
// emulates the table (its vfio_msix_early_setup reads the capability, its
// MSI-X emulation overlays the table) and wires each vector it enables with
// SET_IRQS on VFIO_PCI_MSIX_IRQ_INDEX, which the session passes to the
// physical vectors as for any client. The table here is plain storage (a
// client that is not QEMU reads back what it wrote); the PBA reads 0:
// delivery is by eventfd, nothing pends.

import { PCI_NUM_BARS } from '../drivers/config-space.js';
import type { LeaseResources } from '../drivers/driver.js';
import {
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSIX,
  PCI_CAPABILITY_LIST,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
} from '../vfio/uapi/pci-regs.js';

/** Where the capability sits: the first byte past the type-0 header. */
export const MSIX_CAP_AT = 0x40;
const MSIX_ENTRY_SIZE = 16;
/** Vector control: masked, as at power-on. */
const MSIX_ENTRY_CTRL_MASKBIT = 1;
const REGION_MIN = 4096;

export class LeaseMsix {
  /** The lease BAR (and region index) that holds the table and PBA. */
  readonly bar: number;
  readonly vectors: number;
  readonly tableOffset = 0;
  readonly pbaOffset: number;
  /** Region size: a power of two of at least a page, so the BAR decodes exactly this. */
  readonly size: number;
  readonly #table: Uint8Array;

  /** An MSI-X capability for `res`, or null when it has no MSI-X vectors or no BAR register is free. */
  static for(res: LeaseResources): LeaseMsix | null {
    const physicalIndex = res.irqIndex ?? 2; // VFIO_PCI_MSIX_IRQ_INDEX
    if (physicalIndex !== 2 || res.vectors.length === 0) return null;
    const used = new Set<number>();
    for (const s of res.slices) {
      if (s.leaseRegion >= PCI_NUM_BARS) continue;
      used.add(s.leaseRegion);
      used.add(s.leaseRegion + 1); // a slice BAR may be 64-bit: keep its upper half free too
    }
    for (let bar = 0; bar < PCI_NUM_BARS; bar++)
      if (!used.has(bar)) return new LeaseMsix(bar, res.vectors.length);
    return null;
  }

  private constructor(bar: number, vectors: number) {
    this.bar = bar;
    this.vectors = vectors;
    this.pbaOffset = align(vectors * MSIX_ENTRY_SIZE, 8);
    let size = REGION_MIN;
    while (size < this.pbaOffset + align(Math.ceil(vectors / 64) * 8, 8)) size *= 2;
    this.size = size;
    this.#table = new Uint8Array(vectors * MSIX_ENTRY_SIZE);
    for (let v = 0; v < vectors; v++) this.#table[v * MSIX_ENTRY_SIZE + 12] = MSIX_ENTRY_CTRL_MASKBIT;
  }

  /** Add the capability (and its 32-bit memory BAR's type bits, which are 0) to a lease config space. */
  install(config: Uint8Array): void {
    const dv = new DataView(config.buffer, config.byteOffset, config.byteLength);
    dv.setUint16(PCI_STATUS, dv.getUint16(PCI_STATUS, true) | PCI_STATUS_CAP_LIST, true);
    dv.setUint8(PCI_CAPABILITY_LIST, MSIX_CAP_AT);
    dv.setUint8(MSIX_CAP_AT, PCI_CAP_ID_MSIX);
    dv.setUint8(MSIX_CAP_AT + 1, 0); // the last capability
    dv.setUint16(MSIX_CAP_AT + PCI_MSIX_FLAGS, this.vectors - 1, true); // table size N-1, disabled
    dv.setUint32(MSIX_CAP_AT + PCI_MSIX_TABLE, this.tableOffset | this.bar, true);
    dv.setUint32(MSIX_CAP_AT + PCI_MSIX_PBA, this.pbaOffset | this.bar, true);
    dv.setUint32(PCI_BASE_ADDRESS_0 + 4 * this.bar, 0, true); // 32-bit, non-prefetchable memory
  }

  /**
   * A config write landing in the capability: only Message Control's enable and function-mask bits are
   * writable (as on hardware); returns whether the write was the capability's.
   */
  configWrite(config: Uint8Array, offset: number, data: Uint8Array): boolean {
    if (offset < MSIX_CAP_AT || offset >= MSIX_CAP_AT + 12) return false;
    const dv = new DataView(config.buffer, config.byteOffset, config.byteLength);
    const at = MSIX_CAP_AT + PCI_MSIX_FLAGS;
    const cur = dv.getUint16(at, true);
    const bytes = new Uint8Array([cur & 0xff, cur >> 8]);
    for (let i = 0; i < data.byteLength; i++) {
      const o = offset + i - at;
      if (o === 0 || o === 1) bytes[o] = data[i] as number;
    }
    const wanted = bytes[0]! | (bytes[1]! << 8);
    const keep = PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL;
    dv.setUint16(at, (cur & ~keep) | (wanted & keep), true);
    return true;
  }

  read(offset: number, count: number): Uint8Array {
    const out = new Uint8Array(count);
    const tableEnd = this.#table.byteLength;
    for (let i = 0; i < count; i++) {
      const o = offset + i;
      if (o < tableEnd) out[i] = this.#table[o] as number;
    }
    return out; // the PBA and the rest read 0
  }

  /** The table as the client left it (an upgrade carries it: session-state.ts). */
  tableBytes(): Uint8Array {
    return this.#table.slice();
  }

  /** Put back a table tableBytes() gave (an upgrade); throws naming the problem if it is not this table's size. */
  restoreTable(bytes: Uint8Array): void {
    if (bytes.byteLength !== this.#table.byteLength)
      throw new Error(
        `an MSI-X table of ${bytes.byteLength} bytes cannot be this lease's (${this.vectors} vectors: ${this.#table.byteLength} bytes)`,
      );
    this.#table.set(bytes);
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; i++) {
      const o = offset + i;
      if (o < this.#table.byteLength) this.#table[o] = data[i] as number;
    }
  }
}

const align = (n: number, a: number): number => Math.ceil(n / a) * a;
