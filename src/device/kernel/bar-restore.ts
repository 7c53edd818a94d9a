// A reset the device went through behind vfio-pci's back clears its BARs and command register in the hardware:
// the kernel's AER recovery of a fatal error resets the link (a secondary bus reset of the port above it) after
// it signalled ERR, and nothing restores the device's config for vfio-pci, which has no slot_reset. The device
// then decodes none of its BARs (every access reads all-ones), and VFIO_DEVICE_RESET does not help: it saves the
// state the device has (the cleared one) and restores that.
//
// vfio-pci puts the BARs back itself (vfio_pci_config.c, vfio_bar_restore: "reset recovery - restoring BARs")
// at a write of the command register that enables memory decode which it thinks enabled and the hardware has
// disabled. The command register's decode bits read as the hardware has them, so the bits to ask for are the
// ones the device had when it was opened (vfio-pci enables decode at open, pci_enable_device): restoreDecode()
// writes them back when the hardware lost them, and writes nothing to a device whose config is intact.

import { PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MEMORY } from '../../vfio/uapi/pci-regs.js';
import type { ConfigAccess } from './device-signals.js';

/** The decode bits (memory, I/O) the device has now: read at open, for restoreDecode(). */
export async function decodeBits(cfg: ConfigAccess): Promise<number> {
  return (await commandOf(cfg)) & (PCI_COMMAND_MEMORY | PCI_COMMAND_IO);
}

/**
 * Have vfio-pci restore the device's BARs and decode if the hardware lost them (see above). Returns whether it
 * had to.
 */
export async function restoreDecode(cfg: ConfigAccess, decode: number): Promise<boolean> {
  const cmd = await commandOf(cfg);
  if ((cmd & decode) === decode) return false;
  const value = cmd | decode;
  await cfg.write(PCI_COMMAND, new Uint8Array([value & 0xff, value >> 8]));
  return true;
}

async function commandOf(cfg: ConfigAccess): Promise<number> {
  const b = await cfg.read(PCI_COMMAND, 2);
  return b[0]! | (b[1]! << 8);
}
