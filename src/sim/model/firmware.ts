// Firmware (datasheet §6): the image format, an image generator for the
// broker and tests, the fetch-and-verify step the device runs after FW_CMD,
// and the registers that follow from it (FW_STATUS, FW_VERSION, HEARTBEAT).

import { crc32c } from './crc32c.js';
import {
  FW_ERR_BAD_CHECKSUM,
  FW_ERR_BAD_LENGTH,
  FW_ERR_BAD_MAGIC,
  FW_ERR_IOMMU_FAULT,
  FW_HEADER_SIZE,
  FW_MAGIC,
  FW_MAX_PAYLOAD,
  FW_STATUS_ERROR,
  FW_STATUS_LOADING,
  FW_STATUS_NONE,
  FW_STATUS_RUNNING,
  HEARTBEAT_PERIOD_MS,
  REG_FW_IOVA,
  REG_FW_LEN,
  REG_FW_STATUS,
  REG_FW_VERSION,
} from './datasheet.js';
import type { Iommu } from './iommu.js';
import { gather, type Segments } from './memory.js';
import type { RegisterFile } from './register-file.js';

const MAGIC_BYTES = new TextEncoder().encode(FW_MAGIC);

// The image builder is shared with the driver (its default image): src/hw/sa1/firmware-image.ts.
export { makeFirmwareImage } from '../../hw/sa1/firmware-image.js';

/** Reads `length` bytes at `iova` through the IOMMU; returns the faulting IOVA instead when it cannot. */
export type ImageFetch = (iova: bigint, length: number) => Uint8Array | { faultIova: bigint };

/**
 * The device's fetch of image bytes: through the IOMMU, as a DMA read, only while bus mastering is on. An
 * image whose backing shrank while it was read (rev 2 §7) faults rather than reading zeros.
 */
export function imageFetch(iommu: Iommu, busMaster: boolean): ImageFetch {
  return (iova, length) => {
    if (!busMaster) return { faultIova: iova };
    const segs: Segments = [];
    const fault = iommu.translate(Number(iova), length, false, segs);
    if (fault >= 0) return { faultIova: fault === Number(iova) ? iova : BigInt(fault) };
    const bytes = gather(segs, new Uint8Array(length));
    const shrank = iommu.sync() ? iommu.deadIn(Number(iova), length) : -1;
    return shrank >= 0 ? { faultIova: BigInt(shrank) } : bytes;
  };
}

export type VerifyResult = { ok: true; version: number } | { ok: false; error: number; faultIova: bigint };

/** Fetch and check an image: length, magic, declared length, payload CRC (in that order). */
export function verifyImage(iova: bigint, len: number, fetch: ImageFetch): VerifyResult {
  if (len < FW_HEADER_SIZE || len > FW_HEADER_SIZE + FW_MAX_PAYLOAD) {
    return { ok: false, error: FW_ERR_BAD_LENGTH, faultIova: iova };
  }
  const header = fetch(iova, FW_HEADER_SIZE);
  if (!(header instanceof Uint8Array))
    return { ok: false, error: FW_ERR_IOMMU_FAULT, faultIova: header.faultIova };
  for (let i = 0; i < 4; i++) {
    if (header[i] !== MAGIC_BYTES[i]) return { ok: false, error: FW_ERR_BAD_MAGIC, faultIova: iova };
  }
  const dv = new DataView(header.buffer, header.byteOffset, FW_HEADER_SIZE);
  const version = dv.getUint32(4, true);
  const payloadLength = dv.getUint32(8, true);
  const crc = dv.getUint32(12, true);
  if (payloadLength > FW_MAX_PAYLOAD || FW_HEADER_SIZE + payloadLength !== len) {
    return { ok: false, error: FW_ERR_BAD_LENGTH, faultIova: iova };
  }
  const payload = fetch(iova + BigInt(FW_HEADER_SIZE), payloadLength);
  if (!(payload instanceof Uint8Array)) {
    return { ok: false, error: FW_ERR_IOMMU_FAULT, faultIova: payload.faultIova };
  }
  if (crc32c(payload) !== crc) return { ok: false, error: FW_ERR_BAD_CHECKSUM, faultIova: iova };
  return { ok: true, version };
}

/** Firmware registers and state; the registers live in the register file. */
export class Firmware {
  /** A load was commanded and the device has not run it yet (the device's own state). */
  loadPending = false;

  constructor(
    private readonly now: () => number,
    private readonly regs: RegisterFile,
  ) {}

  get iova(): bigint {
    return this.regs.load64(REG_FW_IOVA);
  }
  set iova(v: bigint) {
    this.regs.store64(REG_FW_IOVA, v);
  }
  get len(): number {
    return this.regs.load(REG_FW_LEN);
  }
  set len(v: number) {
    this.regs.store(REG_FW_LEN, v);
  }
  get status(): number {
    return this.regs.load(REG_FW_STATUS);
  }
  set status(v: number) {
    this.regs.store(REG_FW_STATUS, v);
  }
  get version(): number {
    return this.regs.load(REG_FW_VERSION);
  }
  set version(v: number) {
    this.regs.store(REG_FW_VERSION, v);
  }

  get running(): boolean {
    return this.status === FW_STATUS_RUNNING;
  }

  command(): void {
    this.status = FW_STATUS_LOADING;
    this.version = 0;
    this.loadPending = true;
    this.#freeze();
  }

  finish(result: VerifyResult): void {
    this.loadPending = false;
    if (result.ok) {
      this.version = result.version;
      this.regs.setHeartbeat(0, this.now(), false);
      this.status = FW_STATUS_RUNNING;
    } else {
      this.status = (FW_STATUS_ERROR | result.error) >>> 0;
    }
  }

  heartbeat(): number {
    return this.regs.heartbeat(this.now(), HEARTBEAT_PERIOD_MS);
  }

  /** The device hung: the heartbeat stops where it is. */
  hang(): void {
    this.#freeze();
  }

  unload(): void {
    this.iova = 0n;
    this.len = 0;
    this.status = FW_STATUS_NONE;
    this.version = 0;
    this.loadPending = false;
    this.regs.setHeartbeat(0, 0, true);
  }

  #freeze(): void {
    if (!this.regs.heartbeatFrozen) this.regs.setHeartbeat(this.heartbeat(), 0, true);
  }
}
