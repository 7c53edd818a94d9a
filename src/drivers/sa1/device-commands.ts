// Whole-device commands of the SA-1 driver: reset, bus master, and revoking
// every slice a previous broker handed out. Each is a few device commands
// with a bound; none keeps state.

import type { Device } from '../../device/device.js';
import { BAR0, CONTROL, REG } from '../../hw/sa1/regs.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../../vfio/uapi/pci-regs.js';
import { VFIO_PCI_CONFIG_REGION_INDEX } from '../../vfio/uapi/vfio.js';
import { pollUntil } from '../poll.js';

/** Bound on a whole-device reset (CONTROL.RESET to read 0). */
export const DEVICE_RESET_TIMEOUT_MS = 1000;

export async function revokeAll(dev: Device, region: number, units: number, unit: bigint): Promise<void> {
  const PER_CALL = 16; // one reply carries at most max_msg_fds slice fds
  for (let first = 0; first < units; first += PER_CALL) {
    const ranges = [];
    for (let i = first; i < Math.min(units, first + PER_CALL); i++)
      ranges.push({ offset: BigInt(i) * unit, length: unit });
    const fds = await dev.sliceFds(region, ranges);
    try {
      for (const fd of fds) await dev.revokeSlice(fd);
    } finally {
      for (const fd of fds) fd.close();
    }
  }
}

/** Memory space and bus master on: the device refuses DMA (firmware fetch included) without bus master. */
export async function enableBusMaster(dev: Device): Promise<void> {
  const cmd = await dev.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
  const v =
    new DataView(cmd.buffer, cmd.byteOffset, 2).getUint16(0, true) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  const out = new Uint8Array(2);
  new DataView(out.buffer).setUint16(0, v, true);
  await dev.write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, out);
}

/** CONTROL.RESET until it reads 0; ETIMEDOUT past DEVICE_RESET_TIMEOUT_MS. */
export async function resetDevice(dev: Device): Promise<void> {
  // No ERR follows: a reset the owner asked for is no error (datasheet rev 2, 2.4).
  await dev.write32(BAR0, REG.CONTROL, CONTROL.RESET);
  await pollUntil({
    what: 'sa1: device reset (CONTROL.RESET)',
    read: () => dev.read32(BAR0, REG.CONTROL),
    done: (v) => (v & CONTROL.RESET) === 0,
    timeoutMs: DEVICE_RESET_TIMEOUT_MS,
  });
}
