// A Device over the kernel's VFIO device fd: regions through
// DEVICE_GET_REGION_INFO and pread/pwrite at the region's offset, BAR mmap,
// SET_IRQS with eventfds, DEVICE_RESET, and DMA through the IOMMU domain the
// device was attached to (an iommufd IOAS or a type1 container).
//
// Slices: the kernel exports BAR ranges as dma-buf fds (feature 11, Linux
// 6.19) but such an fd cannot be mmapped and has no revoke, so a client
// cannot be given a slice fd of its own: sliceFds/revokeSlice reject with
// ENOTSUP. A mappable slice is instead handed out `audited`: the client gets
// the device fd once (directFd()), maps its slice at the region's offset and
// closes it, and the broker checks from /proc that it did
// (src/broker/audit-scan). Feature 13 is never sent here: in the kernel it is
// s390's ZPCI_ERROR, not devlease's revoke. Region info, bounds and BAR map
// tracking are regions.ts; the VFIO_DEVICE_FEATURE calls, dmabuf-probe.ts;
// the device's part in a broker upgrade (whose it is, what it hands over),
// device-upgrade.ts.

import { EventEmitter } from 'node:events';
import { closedError } from '../../errors.js';
import type { Fd } from '../../sys/fd.js';
import {
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_RESET,
  VFIO_PCI_CONFIG_REGION_INDEX,
  vfio_device_info,
} from '../../vfio/uapi/index.js';
import type { RegionIoFds } from '../../vfio/user/region-io-fds.js';
import type { Device, DeviceRegion, DmaMapping, IovaRange, RevokeOptions, Transport } from '../device.js';
import { readPciIds } from '../pci-ids.js';
import { decodeBits, restoreDecode } from './bar-restore.js';
import { configAccess, DeviceSignals, reportErrors, signalEmitter } from './device-signals.js';
import { type CarriedParts, DeviceUpgrade, type KernelDeviceHandover } from './device-upgrade.js';
import { type DmaBufMmapProbe, exportsDmaBuf, probeBarDmaBufMmap } from './dmabuf-probe.js';
import type { IommuDomain } from './domain.js';
import { KernelIrqs } from './irqs.js';
import { checkMappable, type DeviceIoctl, readRegionInfo, regionSpan, trackBarMap } from './regions.js';
import { codedError, explain, ioctlNamed, type KernelSys, type UserMemory } from './sys.js';

export interface KernelDeviceParts extends CarriedParts {
  sys: KernelSys;
  /** The VFIO device fd; owned by the device from here on. */
  fd: Fd;
  /** For messages, e.g. '/dev/vfio/devices/vfio0'. */
  name: string;
  domain: IommuDomain;
  /** Why this path was taken (the domain's notes and the dma-buf finding are appended). */
  chosen: string;
  reason: string;
  /** Where problems met while closing are reported (close itself never throws). */
  log?: (msg: string) => void;
}

export class KernelDevice extends EventEmitter implements Device {
  readonly transport: Transport;
  readonly path: { chosen: string; reason: string };
  ids!: Device['ids'];
  numRegions = 0;
  numIrqs = 0;
  /** VFIO_DEVICE_FLAGS_*. */
  flags = 0;
  /** The kernel has a reset method for the device (FLR, PM, bus reset, ...): VFIO_DEVICE_RESET works. */
  get resettable(): boolean {
    return (this.flags & VFIO_DEVICE_FLAGS_RESET) !== 0;
  }
  /** The kernel exports BAR ranges as dma-buf fds (VFIO_DEVICE_FEATURE_DMA_BUF answered its PROBE). */
  dmaBuf = false;
  readonly capabilities = { mappableSlices: false, revocableSlices: false };
  /** The device fd can be handed out for audited slices (directFd()). */
  readonly directSlices = true;
  /** Whether a dma-buf of a BAR can be mmapped (probed at open; 'no' on every kernel as of 7.3). */
  dmaBufMmap: DmaBufMmapProbe = { mmap: 'untested', reason: 'not probed' };
  readonly domain: IommuDomain;
  readonly #sys: KernelSys;
  readonly #fd: Fd;
  readonly #name: string;
  readonly #log: (msg: string) => void;
  readonly #regions = new Map<number, DeviceRegion>();
  readonly #barMaps = new Set<UserMemory>();
  #closed = false;
  /** The command register's decode bits at open, which a reset must leave (bar-restore.ts). */
  #decode = 0;
  readonly #carriedDecode: number | undefined;
  /** Wired to the REQ and ERR irqs while the device is this process's (device-signals.ts). */
  readonly #signals: DeviceSignals;
  /** Emits a REQ or ERR signal's event (device-signals.ts: an ERR with nobody listening is kept). */
  readonly #emitSignal = signalEmitter(this);
  /** GET_IRQ_INFO and SET_IRQS (irqs.ts: MSI/MSI-X indexes the kernel sizes once are enabled whole). */
  readonly #irqs = new KernelIrqs((name, request, arg) => this.#ioctl(name, request, arg));
  /** Whose the device is across a broker upgrade, and what it hands the next broker (device-upgrade.ts). */
  readonly #upgrade: DeviceUpgrade;

  private constructor(p: KernelDeviceParts) {
    super();
    this.#sys = p.sys;
    this.#fd = p.fd;
    this.#name = p.name;
    this.#log = p.log ?? ((m) => process.stderr.write(`devlease kernel device: ${m}\n`));
    this.domain = p.domain;
    this.transport = p.domain.transport;
    this.path = { chosen: p.chosen, reason: p.reason };
    this.#carriedDecode = p.decode;
    this.#signals = new DeviceSignals(
      this,
      {
        fired: (event, why) => {
          if (!this.#closed) this.#emitSignal(event, why);
        },
        log: (msg) => this.#log(`${this.#name}: ${msg}`),
      },
      p.signals,
    );
    this.#upgrade = new DeviceUpgrade(
      {
        device: this,
        fd: p.fd,
        name: p.name,
        regions: this.#regions,
        irqs: this.#irqs,
        signals: this.#signals,
        decode: () => this.#decode,
      },
      p.owned ?? true,
    );
  }

  /** Read the device's info, ids and features. On failure everything in `parts` is closed. */
  static async create(parts: KernelDeviceParts): Promise<KernelDevice> {
    const dev = new KernelDevice(parts);
    try {
      await dev.#init();
      if (dev.#upgrade.owned) await dev.#signals.start();
    } catch (err) {
      await dev.close();
      throw err;
    }
    return dev;
  }

  async #init(): Promise<void> {
    const info = vfio_device_info.encode({ argsz: vfio_device_info.size });
    this.#ioctl('VFIO_DEVICE_GET_INFO', VFIO_DEVICE_GET_INFO, info);
    const d = vfio_device_info.decode(info);
    this.flags = d.flags;
    this.numRegions = d.num_regions;
    this.numIrqs = d.num_irqs;
    this.ids = await readPciIds((off, n) => this.read(VFIO_PCI_CONFIG_REGION_INDEX, off, n));
    // Carried over by an upgrade rather than read: a link reset may have cleared them since.
    this.#decode = this.#carriedDecode ?? (await decodeBits(this.#config));
    this.dmaBuf = exportsDmaBuf(this.#deviceIoctl);
    const slices = this.dmaBuf
      ? 'BAR ranges export as dma-buf fds, but those cannot be revoked: mappable BAR slices are audited'
      : 'no dma-buf export of BAR ranges (VFIO_DEVICE_FEATURE_DMA_BUF): mappable BAR slices are audited';
    this.path.reason = [this.path.reason, ...this.domain.notes, slices].join('; ');
  }

  /**
   * Export a one-page dma-buf of the first mappable BAR and try to mmap it (dmabuf-probe.ts); the answer is kept
   * in `dmaBufMmap`. The broker asks once at start.
   */
  async probeDmaBufMmap(): Promise<DmaBufMmapProbe> {
    this.dmaBufMmap = await probeBarDmaBufMmap(this.#sys, this, this.#deviceIoctl);
    return this.dmaBufMmap;
  }

  /**
   * A new fd of the device's open description, for a client to mmap its audited slice from (at
   * region(index).offset + the slice's offset). The caller sends it and closes its copy.
   */
  directFd(): Fd {
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    return this.#fd.dup();
  }

  #ioctl(name: string, request: number, arg: number | Uint8Array): number {
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    return ioctlNamed(this.#sys, this.#fd, name, this.#name, request, arg);
  }

  /** #ioctl as a function, for the helpers that issue the device's ioctls (regions.ts, dmabuf-probe.ts). */
  readonly #deviceIoctl: DeviceIoctl = (name, request, arg) => this.#ioctl(name, request, arg);

  async region(index: number): Promise<DeviceRegion> {
    const known = this.#regions.get(index);
    if (known) return known;
    const r = readRegionInfo(this.#deviceIoctl, index);
    this.#regions.set(index, r);
    return r;
  }

  async #span(index: number, offset: bigint | number, count: number): Promise<bigint> {
    return regionSpan(await this.region(index), index, offset, count);
  }

  async read(index: number, offset: bigint | number, count: number): Promise<Uint8Array> {
    const at = await this.#span(index, offset, count);
    const buf = new Uint8Array(count);
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    let n: number;
    try {
      n = this.#sys.pread(this.#fd, buf, at);
    } catch (err) {
      throw explain(err, `read of region ${index} at 0x${BigInt(offset).toString(16)} on ${this.#name}`);
    }
    if (n !== count) throw codedError('EIO', `region ${index}: short read (${n} of ${count} bytes)`);
    return buf;
  }

  async write(index: number, offset: bigint | number, data: Uint8Array): Promise<void> {
    const at = await this.#span(index, offset, data.byteLength);
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    let n: number;
    try {
      n = this.#sys.pwrite(this.#fd, data, at);
    } catch (err) {
      throw explain(err, `write of region ${index} at 0x${BigInt(offset).toString(16)} on ${this.#name}`);
    }
    if (n !== data.byteLength) {
      throw codedError('EIO', `region ${index}: short write (${n} of ${data.byteLength} bytes)`);
    }
  }

  async read32(index: number, offset: number): Promise<number> {
    const b = await this.read(index, offset, 4);
    return new DataView(b.buffer).getUint32(0, true);
  }
  async write32(index: number, offset: number, value: number): Promise<void> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    await this.write(index, offset, b);
  }
  async read64(index: number, offset: number): Promise<bigint> {
    const b = await this.read(index, offset, 8);
    return new DataView(b.buffer).getBigUint64(0, true);
  }
  async write64(index: number, offset: number, value: bigint): Promise<void> {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value, true);
    await this.write(index, offset, b);
  }

  /**
   * mmap part of a region (a BAR) into this process. The region must allow
   * mmap, and with a sparse-mmap capability the range must sit inside one of
   * its areas. The device unmaps whatever is still mapped when it closes.
   */
  async mapRegion(index: number, offset = 0n, length?: bigint): Promise<UserMemory> {
    const r = await this.region(index);
    const len = length ?? r.size - offset;
    checkMappable(r, index, offset, len);
    const at = await this.#span(index, offset, Number(len));
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    return trackBarMap(this.#barMaps, this.#sys.mmap(this.#fd, Number(len), at, 'rw'));
  }

  iovaRanges(): IovaRange[] {
    return this.domain.ranges;
  }

  async dmaMap(m: DmaMapping): Promise<void> {
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    this.#upgrade.mine('DMA map');
    this.domain.map(m);
  }

  async dmaUnmap(iova: bigint, size: bigint): Promise<void> {
    if (this.#closed) throw closedError(`kernel device ${this.#name}`);
    this.#upgrade.mine('DMA unmap');
    this.domain.unmap(iova, size);
  }

  async irqCount(index: number): Promise<number> {
    return this.#irqs.infoOf(index).count;
  }

  /** One SET_IRQS for the block: fd -1 unassigns a vector, the others keep theirs (irqs.ts: NORESIZE indexes). */
  async setIrqs(index: number, start: number, fds: (Fd | null)[]): Promise<void> {
    this.#upgrade.mine('SET_IRQS');
    this.#irqs.set(
      index,
      start,
      fds.map((f) => (f ? f.fd : -1)),
    );
  }

  async disableIrqs(index: number): Promise<void> {
    this.#upgrade.mine('SET_IRQS');
    this.#irqs.disable(index);
  }

  async irqAutomasked(index: number): Promise<boolean> {
    return this.#irqs.automasked(index);
  }

  async unmaskIrq(index: number, start: number): Promise<void> {
    this.#upgrade.mine('SET_IRQS');
    this.#irqs.unmask(index, start);
  }

  /** Adopted: which MSI/MSI-X indexes the previous broker had enabled (undefined: it did not say). */
  adoptIrqs(enabled: number[] | undefined): void {
    this.#irqs.adopt(enabled);
  }

  async reset(): Promise<void> {
    this.#upgrade.mine('reset');
    // Before: the reset's save then holds decoded BARs, so its restore can write the MSI-X table (bar-restore.ts);
    // failing, the reset runs still. After: in case the link was reset meanwhile.
    await this.#restoreDecode().catch((err: Error) =>
      this.#log(`${this.#name}: the command register before the reset: ${err.message}`),
    );
    try {
      this.#ioctl('VFIO_DEVICE_RESET', VFIO_DEVICE_RESET, 0);
    } catch (err) {
      if (this.flags & VFIO_DEVICE_FLAGS_RESET) throw err;
      throw Object.assign(err as Error, {
        message: `${(err as Error).message}: the kernel reports no reset method for this device (no FLR, PM or bus reset)`,
      });
    }
    await this.#restoreDecode();
    await reportErrors(this, (msg) => this.#log(`${this.#name}: ${msg}`));
  }

  async #restoreDecode(): Promise<void> {
    if (await restoreDecode(this.#config, this.#decode))
      this.#log(
        `${this.#name}: the device had lost its BARs and decode (a link reset); vfio-pci restored them`,
      );
  }

  readonly #config = configAccess(this);

  async sliceFds(_region: number, _ranges: { offset: bigint; length: bigint }[]): Promise<Fd[]> {
    throw codedError(
      'ENOTSUP',
      this.dmaBuf
        ? 'kernel dma-buf fds of BAR ranges cannot be mmapped or revoked: no slice fds to lease'
        : 'this kernel does not export BAR ranges (no VFIO_DEVICE_FEATURE_DMA_BUF)',
    );
  }

  /** The kernel's VFIO has no ioeventfd hand-out to user space (KVM wires them in-kernel). */
  async regionIoFds(index: number): Promise<RegionIoFds> {
    throw codedError('ENOTSUP', `region ${index}: a kernel VFIO device hands out no io fds`);
  }

  async revokeSlice(_fd: Fd, _opts?: RevokeOptions): Promise<void> {
    throw codedError('ENOTSUP', 'the kernel has no revoke for dma-buf slices');
  }

  /** What another broker process needs to carry this device on (device-upgrade.ts); the fds stay this one's. */
  handover(add: (fd: Fd) => number): KernelDeviceHandover {
    return this.#upgrade.handover(add);
  }

  /**
   * An upgrade's transfer: REQ and ERR are left unread in their eventfds, which the handover carries, for the
   * broker that carries on to read (device-signals.ts, DeviceSignals.hold). unholdSignals() undoes it (a rollback),
   * resolving once a signal that cannot be watched again is unwired and closed (DeviceSignals.unhold).
   */
  holdSignals(): void {
    this.#signals.hold();
  }

  unholdSignals(): Promise<void> {
    return this.#signals.unhold();
  }

  /** An adopted device becomes this process's (the upgrade committed); returns what became of the accounting. */
  takeOver(): string {
    return this.#upgrade.takeOver();
  }

  /** After an upgrade's commit: what became of the pinned-page accounting (status shows it). */
  get pinnedAccounting(): string | null {
    return this.#upgrade.pinnedAccounting;
  }

  /**
   * Unmap BARs and DMA, detach, close the device fd, then free the IOMMU side. Idempotent. A device adopted
   * and not taken over only closes its fds: the maps and the attachment are the previous broker's still.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (!this.#upgrade.owned) {
      for (const m of [...this.#barMaps]) m.unmap();
      this.#closed = true;
      this.#fd.close();
      this.#signals.close();
      this.domain.abandon();
      this.emit('close');
      return;
    }
    const problems: string[] = [];
    for (const m of [...this.#barMaps]) m.unmap();
    try {
      this.domain.release();
    } catch (err) {
      problems.push((err as Error).message);
    }
    this.#closed = true;
    this.#fd.close();
    this.#signals.close();
    try {
      this.domain.close();
    } catch (err) {
      problems.push((err as Error).message);
    }
    if (problems.length) this.#log(`closing ${this.#name}: ${problems.join('; ')}`);
    this.emit('close');
  }
}
