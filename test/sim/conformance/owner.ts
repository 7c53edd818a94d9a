// A minimal SA-1 owner and client written from the datasheet alone (offsets
// from ./sa1-spec.ts, bytes laid out by hand): register access over
// VFIO_USER_REGION_READ/WRITE, a firmware image, fault records, and a queue
// whose descriptors are raw bytes in host memory.

import type { VfioUserClient } from '../../../src/vfio/user/client.js';
import { type HostRegion, type Rig, until } from '../helpers/real.js';
import {
  BAR0,
  CONTROL,
  CQE,
  FW,
  FW_STATUS,
  IRQ_MODE,
  Q_CTRL,
  QCFG,
  QCFG_STRIDE,
  QPAGE,
  REGION,
  SQE,
} from './sa1-spec.js';

/** PCI type-0 header (PCI Local Bus spec, not the datasheet). */
export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_MEMORY = 1 << 1;
export const PCI_COMMAND_MASTER = 1 << 2;

export async function r32(c: VfioUserClient, region: number, off: number): Promise<number> {
  return (await c.regionRead(region, off, 4)).readUInt32LE(0);
}
export async function r64(c: VfioUserClient, region: number, off: number): Promise<bigint> {
  return (await c.regionRead(region, off, 8)).readBigUInt64LE(0);
}
export async function w32(c: VfioUserClient, region: number, off: number, v: number): Promise<void> {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  await c.regionWrite(region, off, b);
}
export async function w64(c: VfioUserClient, region: number, off: number, v: bigint): Promise<void> {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  await c.regionWrite(region, off, b);
}
export const qcfg = (q: number, reg: number): number => BAR0.QCFG + q * QCFG_STRIDE + reg;

/** Bit-at-a-time CRC32C (reflected Castagnoli polynomial): slow, obviously right, shares nothing with src/. */
export function crc32cReference(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** §6: "SA1F", u32 version, u32 payload length, u32 CRC32C(payload), payload. */
export function firmwareImage(version: number, payload = new TextEncoder().encode('conformance')): Buffer {
  const image = Buffer.alloc(FW.headerSize + payload.length);
  image.write(FW.magic, 0, 'latin1');
  image.writeUInt32LE(version, FW.version);
  image.writeUInt32LE(payload.length, FW.length);
  image.writeUInt32LE(crc32cReference(payload), FW.crc);
  image.set(payload, FW.headerSize);
  return image;
}

/** FW_IOVA/FW_LEN/FW_CMD=1, then wait for FW_STATUS to leave LOADING; returns FW_STATUS. */
export async function loadFirmware(c: VfioUserClient, iova: bigint, length: number): Promise<number> {
  await w64(c, REGION.bar0, BAR0.FW_IOVA, iova);
  await w32(c, REGION.bar0, BAR0.FW_LEN, length);
  await w32(c, REGION.bar0, BAR0.FW_CMD, 1);
  let status = FW_STATUS.LOADING as number;
  await until(async () => {
    status = await r32(c, REGION.bar0, BAR0.FW_STATUS);
    return status !== FW_STATUS.LOADING;
  }, 'FW_STATUS to leave LOADING');
  return status;
}

export async function enableBusMaster(c: VfioUserClient): Promise<void> {
  const cmd = (await c.regionRead(REGION.config, PCI_COMMAND, 2)).readUInt16LE(0);
  const b = Buffer.alloc(2);
  b.writeUInt16LE(cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  await c.regionWrite(REGION.config, PCI_COMMAND, b);
}

/** Bus master on, firmware `version` loaded from `fw` (a mapped host region), CONTROL.ENABLE. */
export async function boot(c: VfioUserClient, fw: HostRegion, version = 0x0102_0304): Promise<void> {
  await enableBusMaster(c);
  const image = firmwareImage(version);
  fw.view.set(image);
  const status = await loadFirmware(c, fw.iova, image.length);
  if (status !== FW_STATUS.RUNNING)
    throw new Error(`firmware did not start: FW_STATUS 0x${status.toString(16)}`);
  await w32(c, REGION.bar0, BAR0.CONTROL, CONTROL.ENABLE);
}

export interface FaultRecord {
  queue: number;
  code: number;
  reserved: number;
  iova: bigint;
}

/** §5: record `n` (a count, not a slot) of the ring at FAULT_LOG, read as four dwords. */
export async function faultRecord(c: VfioUserClient, n: number): Promise<FaultRecord> {
  const at = BAR0.FAULT_LOG + (n % 16) * 16;
  const d0 = await r32(c, REGION.bar0, at);
  const reserved = await r32(c, REGION.bar0, at + 4);
  const iova = await r64(c, REGION.bar0, at + 8);
  return { queue: d0 & 0xffff, code: d0 >>> 16, reserved, iova };
}

export interface Sqe {
  opcode: number;
  flags?: number;
  length?: number;
  src?: bigint;
  dst?: bigint;
  imm?: bigint;
  tag: bigint;
  /** Extra raw bytes [offset, value] (reserved fields). */
  poke?: [number, number][];
}

export interface Cqe {
  tag: bigint;
  result: number;
  status: number;
  phase: number;
}

export interface QueueLayout {
  q: number;
  stride: number;
  host: HostRegion;
  /** Offsets of the rings inside `host`. */
  sqAt: number;
  cqAt: number;
  sqSize: number;
  cqSize: number;
  window: { base: bigint; size: bigint };
  devmem?: { base: number; size: number };
  vector?: number;
  irqMode?: number;
  /** The client's mapping of its queue page; absent: through the owner's BAR2. */
  page?: Buffer;
}

/** One queue driven by raw bytes: the owner programs QCFG, the client the queue page and the rings. */
export class RawQueue {
  tail = 0;
  head = 0;
  constructor(
    readonly c: VfioUserClient,
    readonly l: QueueLayout,
  ) {}

  async configure(): Promise<void> {
    const { c, l } = this;
    await w64(c, REGION.bar0, qcfg(l.q, QCFG.Q_WIN_BASE), l.window.base);
    await w64(c, REGION.bar0, qcfg(l.q, QCFG.Q_WIN_SIZE), l.window.size);
    await w32(c, REGION.bar0, qcfg(l.q, QCFG.Q_MEM_BASE), l.devmem?.base ?? 0);
    await w32(c, REGION.bar0, qcfg(l.q, QCFG.Q_MEM_SIZE), l.devmem?.size ?? 0);
    await w32(c, REGION.bar0, qcfg(l.q, QCFG.Q_VECTOR), l.vector ?? 0xffff);
    await w32(c, REGION.bar0, qcfg(l.q, QCFG.Q_CTRL), Q_CTRL.ENABLE);
    await this.pageWrite64(QPAGE.SQ_BASE, l.host.iova + BigInt(l.sqAt));
    await this.pageWrite32(QPAGE.SQ_SIZE, l.sqSize);
    await this.pageWrite64(QPAGE.CQ_BASE, l.host.iova + BigInt(l.cqAt));
    await this.pageWrite32(QPAGE.CQ_SIZE, l.cqSize);
    await this.pageWrite32(QPAGE.IRQ_MODE, l.irqMode ?? IRQ_MODE.FLAGGED);
  }

  /** Q_CTRL.RESET, wait for it to read 0, clear the rings, then configure again. */
  async reset(): Promise<void> {
    await w32(this.c, REGION.bar0, qcfg(this.l.q, QCFG.Q_CTRL), Q_CTRL.RESET);
    await until(async () => (await this.qcfg32(QCFG.Q_CTRL)) === 0, 'Q_CTRL.RESET to read 0');
    this.tail = 0;
    this.head = 0;
    const { host, sqAt, cqAt, sqSize, cqSize } = this.l;
    host.view.fill(0, sqAt, sqAt + sqSize * SQE.size);
    host.view.fill(0, cqAt, cqAt + cqSize * CQE.size);
  }

  qcfg32(reg: number): Promise<number> {
    return r32(this.c, REGION.bar0, qcfg(this.l.q, reg));
  }
  qcfg64(reg: number): Promise<bigint> {
    return r64(this.c, REGION.bar0, qcfg(this.l.q, reg));
  }

  async pageWrite32(reg: number, v: number): Promise<void> {
    if (this.l.page) this.l.page.writeUInt32LE(v >>> 0, reg);
    else await w32(this.c, REGION.bar2, this.l.q * this.l.stride + reg, v);
  }
  async pageWrite64(reg: number, v: bigint): Promise<void> {
    await this.pageWrite32(reg, Number(v & 0xffffffffn));
    await this.pageWrite32(reg + 4, Number(v >> 32n));
  }
  async pageRead32(reg: number): Promise<number> {
    if (this.l.page) return this.l.page.readUInt32LE(reg);
    return r32(this.c, REGION.bar2, this.l.q * this.l.stride + reg);
  }

  /** Lay out each SQE byte by byte at the tail, then ring SQ_TAIL once. */
  async submit(entries: Sqe[]): Promise<void> {
    const v = Buffer.from(this.l.host.view.buffer, this.l.host.view.byteOffset, this.l.host.view.byteLength);
    for (const e of entries) {
      const at = this.l.sqAt + (this.tail % this.l.sqSize) * SQE.size;
      v.fill(0, at, at + SQE.size);
      v.writeUInt8(e.opcode, at + SQE.opcode);
      v.writeUInt8(e.flags ?? 0, at + SQE.flags);
      v.writeUInt32LE(e.length ?? 0, at + SQE.length);
      v.writeBigUInt64LE(e.src ?? 0n, at + SQE.src);
      v.writeBigUInt64LE(e.dst ?? 0n, at + SQE.dst);
      v.writeBigUInt64LE(e.imm ?? 0n, at + SQE.imm);
      v.writeBigUInt64LE(e.tag, at + SQE.tag);
      for (const [off, byte] of e.poke ?? []) v.writeUInt8(byte, at + off);
      this.tail = (this.tail + 1) >>> 0;
    }
    await this.pageWrite32(QPAGE.SQ_TAIL, this.tail);
  }

  /** The CQE in slot `i` (free-running index), whatever its phase. */
  cqe(i: number): Cqe {
    const at = this.l.cqAt + (i % this.l.cqSize) * CQE.size;
    const v = Buffer.from(this.l.host.view.buffer, this.l.host.view.byteOffset, this.l.host.view.byteLength);
    return {
      tag: v.readBigUInt64LE(at + CQE.tag),
      result: v.readUInt32LE(at + CQE.result),
      status: v.readUInt16LE(at + CQE.status),
      phase: v.readUInt16LE(at + CQE.phase) & 1,
    };
  }

  /** §3 phase: 1 on the first pass through the ring, flipping on every wrap. */
  expectedPhase(i: number): number {
    return Math.floor(i / this.l.cqSize) % 2 === 0 ? 1 : 0;
  }

  /** Wait (bounded) until `n` new completions carry the current phase, consume them, advance CQ_HEAD. */
  async reap(n: number): Promise<Cqe[]> {
    const last = this.head + n - 1;
    await until(
      () => this.cqe(last).phase === this.expectedPhase(last),
      `${n} completions on queue ${this.l.q}`,
    );
    const out = Array.from({ length: n }, (_, k) => this.cqe(this.head + k));
    this.head = (this.head + n) >>> 0;
    await this.pageWrite32(QPAGE.CQ_HEAD, this.head);
    return out;
  }
}

/** A rig's client plus a host region for the firmware, booted. */
export async function bootRig(r: Rig, fwIova = 0x10_0000n): Promise<HostRegion> {
  const fw = await r.map(fwIova, 64 * 1024);
  await boot(r.client, fw);
  return fw;
}
