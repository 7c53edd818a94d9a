// PCI config space (datasheet §1): a type-0 header with BAR sizing, the
// command register's memory-enable and bus-master bits, and a capability
// list holding one MSI-X capability whose table and PBA live in BAR0.
// Any width and alignment is accepted; writes go through a per-byte write
// mask, then BAR dwords are re-derived from their size masks.

import {
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSIX,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
} from '../../vfio/uapi/pci-regs.js';
import {
  CONFIG_SPACE_SIZE,
  REG_MSIX_PBA,
  REG_MSIX_TABLE,
  SA1_CLASS_CODE,
  SA1_DEVICE_ID,
  SA1_REVISION,
  SA1_SUBSYSTEM_ID,
  SA1_SUBSYSTEM_VENDOR_ID,
  SA1_VENDOR_ID,
} from './datasheet.js';

/** Where the MSI-X capability sits. */
export const MSIX_CAP_OFFSET = 0x40;

/** Does a write of [offset, +length) reach the command register (whose bus-master bit the device acts on)? */
export function writeReachesCommand(offset: number, length: number): boolean {
  return offset < PCI_COMMAND + 2 && offset + length > PCI_COMMAND;
}

const BAR_MEM_TYPE_64 = 0b100;
const BAR_MEM_PREFETCH = 0b1000;

interface BarLayout {
  /** Config offset of the (low) dword. */
  at: number;
  size: number;
  is64: boolean;
}

export class ConfigSpace {
  readonly #wmask = new Uint8Array(CONFIG_SPACE_SIZE);
  readonly #dv: DataView;
  readonly #bars: BarLayout[];

  /**
   * Config space over `bytes` (the register file's, shared with the other thread). `init` writes the
   * power-on header; the front end attaches to a device's bytes with init false and gets the same write
   * masks.
   */
  constructor(
    sizes: { bar0: number; bar2: number; bar4: number },
    msixEntries: number,
    readonly bytes: Uint8Array = new Uint8Array(CONFIG_SPACE_SIZE),
    init = true,
  ) {
    if (bytes.length !== CONFIG_SPACE_SIZE)
      throw new RangeError(`config space is ${CONFIG_SPACE_SIZE} bytes`);
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, CONFIG_SPACE_SIZE);
    this.#bars = [
      { at: PCI_BASE_ADDRESS_0, size: sizes.bar0, is64: false },
      { at: PCI_BASE_ADDRESS_0 + 8, size: sizes.bar2, is64: true },
      { at: PCI_BASE_ADDRESS_0 + 16, size: sizes.bar4, is64: true },
    ];
    this.#initMasks();
    if (init) this.#initHeader(msixEntries);
  }

  #initHeader(msixEntries: number): void {
    const dv = this.#dv;
    dv.setUint16(0x00, SA1_VENDOR_ID, true);
    dv.setUint16(0x02, SA1_DEVICE_ID, true);
    dv.setUint16(PCI_STATUS, PCI_STATUS_CAP_LIST, true);
    dv.setUint8(0x08, SA1_REVISION);
    dv.setUint8(0x09, SA1_CLASS_CODE & 0xff);
    dv.setUint8(0x0a, (SA1_CLASS_CODE >> 8) & 0xff);
    dv.setUint8(0x0b, (SA1_CLASS_CODE >> 16) & 0xff);
    dv.setUint16(0x2c, SA1_SUBSYSTEM_VENDOR_ID, true);
    dv.setUint16(0x2e, SA1_SUBSYSTEM_ID, true);
    dv.setUint8(PCI_CAPABILITY_LIST, MSIX_CAP_OFFSET);
    // MSI-X capability: id, next (end of list), message control (table size N-1), table and PBA in BAR0.
    dv.setUint8(MSIX_CAP_OFFSET, PCI_CAP_ID_MSIX);
    dv.setUint8(MSIX_CAP_OFFSET + 1, 0);
    dv.setUint16(MSIX_CAP_OFFSET + 2, msixEntries - 1, true);
    dv.setUint32(MSIX_CAP_OFFSET + 4, REG_MSIX_TABLE | 0, true);
    dv.setUint32(MSIX_CAP_OFFSET + 8, REG_MSIX_PBA | 0, true);
    this.#fixBars();
  }

  #initMasks(): void {
    const wm = new DataView(this.#wmask.buffer);
    wm.setUint16(PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE, true);
    wm.setUint8(0x0c, 0xff); // cache line size
    wm.setUint8(0x3c, 0xff); // interrupt line
    wm.setUint16(MSIX_CAP_OFFSET + 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL, true);
    for (const bar of this.#bars) {
      wm.setUint32(bar.at, 0xffffffff, true);
      if (bar.is64) wm.setUint32(bar.at + 4, 0xffffffff, true);
    }
  }

  get command(): number {
    return this.#dv.getUint16(PCI_COMMAND, true);
  }
  get busMaster(): boolean {
    return (this.command & PCI_COMMAND_MASTER) !== 0;
  }
  get memoryEnabled(): boolean {
    return (this.command & PCI_COMMAND_MEMORY) !== 0;
  }
  get msixEnabled(): boolean {
    return (this.#dv.getUint16(MSIX_CAP_OFFSET + 2, true) & PCI_MSIX_FLAGS_ENABLE) !== 0;
  }

  read(offset: number, count: number): Uint8Array {
    return this.bytes.slice(offset, offset + count);
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const m = this.#wmask[at] as number;
      this.bytes[at] = ((this.bytes[at] as number) & ~m) | ((data[i] as number) & m);
    }
    this.#fixBars();
  }

  /** Keep each BAR's low bits as its type and its address bits aligned to its size (sizing reads the mask). */
  #fixBars(): void {
    const dv = this.#dv;
    for (const bar of this.#bars) {
      const sizeMask = BigInt.asUintN(64, ~(BigInt(bar.size) - 1n));
      const type = bar.is64 ? BAR_MEM_TYPE_64 | BAR_MEM_PREFETCH : 0;
      const lo = dv.getUint32(bar.at, true);
      dv.setUint32(bar.at, ((lo & Number(sizeMask & 0xfffffff0n)) | type) >>> 0, true);
      if (bar.is64) {
        const hi = dv.getUint32(bar.at + 4, true);
        dv.setUint32(bar.at + 4, (hi & Number(sizeMask >> 32n)) >>> 0, true);
      }
    }
  }
}
