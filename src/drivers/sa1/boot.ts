// SA-1 firmware boot (datasheet §6): put the image in broker memory, map it
// at a broker-reserved IOVA, have the device fetch and verify it by DMA, then
// unmap it again — the device keeps running from its own copy.

import { readFileSync } from 'node:fs';
import type { Device } from '../../device/device.js';
import { makeFirmwareImage } from '../../hw/sa1/firmware-image.js';
import { BAR0, FW_STATUS, REG, STATUS } from '../../hw/sa1/regs.js';
import { MemFd } from '../../sys/index.js';
import { pollUntil } from '../poll.js';

/** Broker-private IOVA for the firmware image: below every lease window (those start at 4 GiB). */
export const FW_IMAGE_IOVA = 0x10_0000n;

/** Bound on the device fetching and verifying the image (FW_STATUS to leave LOADING). */
export const FIRMWARE_LOAD_TIMEOUT_MS = 5000;

const FW_ERRORS: Record<number, string> = {
  1: 'bad magic',
  2: 'bad length',
  3: 'bad checksum',
  4: 'IOMMU fault',
};

/** The image the broker loads when the config names none: a valid header and a small payload. */
export function defaultFirmwareImage(): Uint8Array {
  return makeFirmwareImage({
    version: 0x0001_0000,
    payload: new TextEncoder().encode('devlease SA-1 default firmware\n'),
  });
}

export async function bootFirmware(d: Device, path: string | null): Promise<number> {
  const image = path ? new Uint8Array(readFileSync(path)) : defaultFirmwareImage();
  const size = BigInt(Math.ceil(image.byteLength / 4096) * 4096);
  using mem = MemFd.create('sa1-firmware', { size: Number(size) });
  {
    using map = mem.map({ length: Number(size) });
    map.u8.set(image);
  }
  await d.dmaMap({ fd: mem.fd, offset: 0n, iova: FW_IMAGE_IOVA, size, read: true, write: false });
  try {
    await d.write64(BAR0, REG.FW_IOVA, FW_IMAGE_IOVA);
    await d.write32(BAR0, REG.FW_LEN, image.byteLength);
    await d.write32(BAR0, REG.FW_CMD, 1);
    // STATUS too: a device that hangs during the load never finishes it (FW_CMD is ignored while hung), and
    // saying so at once beats waiting out the load's whole deadline.
    const read = async () => ({
      fw: await d.read32(BAR0, REG.FW_STATUS),
      st: await d.read32(BAR0, REG.STATUS),
    });
    const { fw: st, st: status } = await pollUntil({
      what: `sa1: firmware load of ${path ?? '(default image)'} (FW_STATUS)`,
      read,
      done: (v) => v.fw === FW_STATUS.RUNNING || (v.fw & FW_STATUS.ERROR) !== 0 || (v.st & STATUS.HUNG) !== 0,
      timeoutMs: FIRMWARE_LOAD_TIMEOUT_MS,
      format: (v) => `FW_STATUS 0x${v.fw.toString(16)}, STATUS 0x${v.st.toString(16)}`,
    });
    if (status & STATUS.HUNG && st !== FW_STATUS.RUNNING)
      throw new Error(`sa1: the device hung during the firmware load of ${path ?? '(default image)'}`);
    if (st & FW_STATUS.ERROR) {
      const why = FW_ERRORS[st & 0xff] ?? `error 0x${st.toString(16)}`;
      throw new Error(`sa1: firmware ${path ?? '(default image)'} refused by the device: ${why}`);
    }
    return d.read32(BAR0, REG.FW_VERSION);
  } finally {
    await d.dmaUnmap(FW_IMAGE_IOVA, size);
  }
}
