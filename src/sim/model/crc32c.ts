// CRC32C lives in src/hw/sa1/crc32c.ts (the device computes it; the demo
// checks it); re-exported for the simulator's own imports.
export * from '../../hw/sa1/crc32c.js';
