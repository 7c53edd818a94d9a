// The SA-1 firmware image format (datasheet §6): a 16-byte header ("SA1F"
// magic, u32 version, u32 payload length, u32 CRC32C of the payload) and the
// payload. The driver builds its default image with this; the simulator
// checks images against the same constants.

import { crc32c } from './crc32c.js';
import { FW_HEADER_SIZE, FW_MAGIC, FW_MAX_PAYLOAD } from './datasheet.js';

const MAGIC_BYTES = new TextEncoder().encode(FW_MAGIC);
/** Header field offsets. */
export const FW_HEADER = { MAGIC: 0, VERSION: 4, LENGTH: 8, CRC: 12 } as const;

/** Build an SA-1 firmware image: "SA1F", version, payload length, CRC32C(payload), payload. */
export function makeFirmwareImage(opts: { version: number; payload?: Uint8Array }): Uint8Array {
  const payload = opts.payload ?? new TextEncoder().encode(`SA-1 firmware ${opts.version}\n`);
  if (payload.length > FW_MAX_PAYLOAD) {
    throw new RangeError(`firmware payload is ${payload.length} bytes; at most ${FW_MAX_PAYLOAD}`);
  }
  const image = new Uint8Array(FW_HEADER_SIZE + payload.length);
  const dv = new DataView(image.buffer);
  image.set(MAGIC_BYTES, FW_HEADER.MAGIC);
  dv.setUint32(FW_HEADER.VERSION, opts.version >>> 0, true);
  dv.setUint32(FW_HEADER.LENGTH, payload.length, true);
  dv.setUint32(FW_HEADER.CRC, crc32c(payload), true);
  image.set(payload, FW_HEADER_SIZE);
  return image;
}
