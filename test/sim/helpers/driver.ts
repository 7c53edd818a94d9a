// A tiny SA-1 owner + client for tests, over an abstract register bus so
// the same steps drive the device in-process (Sa1Device) and through
// VfioUserClient (the real simulator).

import * as ds from '../../../src/sim/model/datasheet.js';
import {
  type Completion,
  type DescriptorInit,
  decodeCompletion,
  encodeDescriptor,
} from '../../../src/sim/model/descriptor.js';
import { makeFirmwareImage } from '../../../src/sim/model/firmware.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../../../src/vfio/uapi/pci-regs.js';

export const BAR0 = 0;
export const BAR2 = 2;
export const BAR4 = 4;
export const CONFIG = 7;

export interface Bus {
  read(region: number, offset: number, count: number): Promise<Uint8Array>;
  write(region: number, offset: number, data: Uint8Array): Promise<void>;
  /** Let the device make progress until `pred` holds (throws naming `what` when it never does). */
  until(pred: () => boolean | Promise<boolean>, what: string): Promise<void>;
}

/** Host memory the device reaches at `iova` (the test's own mapping of it). */
export interface HostMem {
  iova: bigint;
  view: Uint8Array;
}

export async function r32(bus: Bus, region: number, off: number): Promise<number> {
  const b = await bus.read(region, off, 4);
  return new DataView(b.buffer, b.byteOffset).getUint32(0, true);
}
export async function w32(bus: Bus, region: number, off: number, v: number): Promise<void> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  await bus.write(region, off, b);
}
export async function r64(bus: Bus, region: number, off: number): Promise<bigint> {
  const b = await bus.read(region, off, 8);
  return new DataView(b.buffer, b.byteOffset).getBigUint64(0, true);
}
export async function w64(bus: Bus, region: number, off: number, v: bigint): Promise<void> {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  await bus.write(region, off, b);
}
export const qcfg = (q: number, reg: number): number => ds.REG_QCFG + q * ds.QCFG_STRIDE + reg;

/** Set memory-enable and bus-master, load firmware from `fw` (already mapped), enable the device. */
export async function boot(bus: Bus, fw: HostMem, version = 7): Promise<void> {
  const cmd = await bus.read(CONFIG, PCI_COMMAND, 2);
  const c =
    new DataView(cmd.buffer, cmd.byteOffset).getUint16(0, true) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  await bus.write(CONFIG, PCI_COMMAND, new Uint8Array([c & 0xff, c >> 8]));
  const image = makeFirmwareImage({ version });
  fw.view.set(image);
  await loadFirmware(bus, fw.iova, image.length);
  const status = await r32(bus, BAR0, ds.REG_FW_STATUS);
  if (status !== ds.FW_STATUS_RUNNING)
    throw new Error(`firmware did not start: FW_STATUS 0x${status.toString(16)}`);
  await w32(bus, BAR0, ds.REG_CONTROL, ds.CONTROL_ENABLE);
}

/** FW_IOVA/FW_LEN/FW_CMD, then wait for FW_STATUS to leave LOADING; returns FW_STATUS. */
export async function loadFirmware(bus: Bus, iova: bigint, len: number): Promise<number> {
  await w64(bus, BAR0, ds.REG_FW_IOVA, iova);
  await w32(bus, BAR0, ds.REG_FW_LEN, len);
  await w32(bus, BAR0, ds.REG_FW_CMD, ds.FW_CMD_LOAD);
  await bus.until(
    async () => (await r32(bus, BAR0, ds.REG_FW_STATUS)) !== ds.FW_STATUS_LOADING,
    'firmware load',
  );
  return r32(bus, BAR0, ds.REG_FW_STATUS);
}

export interface QueueSetup {
  q: number;
  /** Memory holding SQ at offset 0 and CQ right after it. */
  mem: HostMem;
  sqSize: number;
  cqSize: number;
  window?: { base: bigint; size: bigint };
  devmemWindow?: { base: number; size: number };
  vector?: number;
  irqMode?: number;
  /** Where the client's view of its queue page is (mmap of the slice); absent = ring doorbells through the owner's BAR2. */
  page?: Uint8Array;
}

/** A client-side queue: rings in host memory, doorbell through the page (or BAR2), completions by phase. */
export class TestQueue {
  tail = 0;
  cqHead = 0;
  readonly cqOffset: number;
  constructor(
    readonly bus: Bus,
    readonly s: QueueSetup,
    readonly stride: number,
  ) {
    this.cqOffset = s.sqSize * ds.SQ_ENTRY_SIZE;
  }
  get sqIova(): bigint {
    return this.s.mem.iova;
  }
  get cqIova(): bigint {
    return this.s.mem.iova + BigInt(this.cqOffset);
  }

  /** Owner: windows, vector, enable; client: ring registers. */
  async configure(): Promise<void> {
    const { bus, s } = this;
    const win = s.window ?? { base: s.mem.iova, size: BigInt(s.mem.view.length) };
    await w64(bus, BAR0, qcfg(s.q, ds.Q_WIN_BASE), win.base);
    await w64(bus, BAR0, qcfg(s.q, ds.Q_WIN_SIZE), win.size);
    if (s.devmemWindow) {
      await w32(bus, BAR0, qcfg(s.q, ds.Q_MEM_BASE), s.devmemWindow.base);
      await w32(bus, BAR0, qcfg(s.q, ds.Q_MEM_SIZE), s.devmemWindow.size);
    }
    await w32(bus, BAR0, qcfg(s.q, ds.Q_VECTOR), s.vector ?? s.q);
    await w32(bus, BAR0, qcfg(s.q, ds.Q_CTRL), ds.Q_CTRL_ENABLE);
    await this.pageWrite64(ds.QP_SQ_BASE, this.sqIova);
    await this.pageWrite32(ds.QP_SQ_SIZE, s.sqSize);
    await this.pageWrite64(ds.QP_CQ_BASE, this.cqIova);
    await this.pageWrite32(ds.QP_CQ_SIZE, s.cqSize);
    await this.pageWrite32(ds.QP_IRQ_MODE, s.irqMode ?? ds.IRQ_MODE_EVERY);
  }

  async pageWrite32(reg: number, v: number): Promise<void> {
    if (this.s.page) new DataView(this.s.page.buffer, this.s.page.byteOffset).setUint32(reg, v >>> 0, true);
    else await w32(this.bus, BAR2, this.s.q * this.stride + reg, v);
  }
  async pageWrite64(reg: number, v: bigint): Promise<void> {
    await this.pageWrite32(reg, Number(v & 0xffffffffn));
    await this.pageWrite32(reg + 4, Number(v >> 32n));
  }
  async pageRead32(reg: number): Promise<number> {
    if (this.s.page) return new DataView(this.s.page.buffer, this.s.page.byteOffset).getUint32(reg, true);
    return r32(this.bus, BAR2, this.s.q * this.stride + reg);
  }

  /** Write descriptors at the tail and ring the doorbell once. */
  async submit(descs: DescriptorInit[], ring = true): Promise<void> {
    for (const d of descs) {
      encodeDescriptor(d, this.s.mem.view, (this.tail % this.s.sqSize) * ds.SQ_ENTRY_SIZE);
      this.tail = (this.tail + 1) >>> 0;
    }
    if (ring) await this.ring();
  }
  async ring(tail = this.tail): Promise<void> {
    await this.pageWrite32(ds.QP_SQ_TAIL, tail);
  }

  /** The completion at free-running index i if its phase says it is new. */
  peek(i: number): Completion | null {
    const c = decodeCompletion(this.s.mem.view, this.cqOffset + (i % this.s.cqSize) * ds.CQ_ENTRY_SIZE);
    const expected = Math.floor(i / this.s.cqSize) & 1 ? 0 : 1;
    return c.phase === expected ? c : null;
  }

  /** Wait for `n` new completions, consume them and advance CQ_HEAD. */
  async reap(n: number): Promise<Completion[]> {
    const out: Completion[] = [];
    await this.bus.until(
      () => this.peek(this.cqHead + n - 1) !== null,
      `${n} completions on queue ${this.s.q}`,
    );
    for (let i = 0; i < n; i++) out.push(this.peek(this.cqHead + i) as Completion);
    this.cqHead = (this.cqHead + n) >>> 0;
    await this.pageWrite32(ds.QP_CQ_HEAD, this.cqHead);
    return out;
  }
}
