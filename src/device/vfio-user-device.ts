// Device over vfio-user: the broker is the vfio-user client of the device
// (the SA-1 simulator, or any vfio-user server). Slices come from the
// dma-buf feature (11) and are revoked with feature 13 — a devlease/SA-1
// extension that exists only over vfio-user (in the kernel, 13 is s390's
// ZPCI_ERROR feature; see docs/PROTOCOL.md).

import { EventEmitter } from 'node:events';
import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';
import { encodeDmaBufPayload } from '../vfio/uapi/payloads.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_CONFIG_REGION_INDEX,
  vfio_device_feature_dma_buf_revoke,
} from '../vfio/uapi/vfio.js';
import { VfioUserClient, type VfioUserClientOptions } from '../vfio/user/client.js';
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from '../vfio/user/protocol.js';
import type { RegionIoFds } from '../vfio/user/region-io-fds.js';
import type { Device, DeviceRegion, DmaMapping, IovaRange, Transport } from './device.js';
import { readPciIds } from './pci-ids.js';

export class VfioUserDevice extends EventEmitter implements Device {
  readonly transport: Transport = 'vfio-user';
  readonly path: { chosen: string; reason: string };
  readonly client: VfioUserClient;
  ids!: Device['ids'];
  numRegions = 0;
  numIrqs = 0;
  capabilities = { mappableSlices: false, revocableSlices: false };
  readonly #ranges: IovaRange[];
  /** Region io fds, per region index (see regionIoFds). */
  readonly #ioFds = new Map<number, Promise<RegionIoFds>>();

  private constructor(client: VfioUserClient, socketPath: string) {
    super();
    this.client = client;
    this.path = {
      chosen: `vfio-user:${socketPath}`,
      reason: 'a vfio-user server (e.g. the SA-1 simulator) was named',
    };
    // vfio-user has no IOVA-range query; the IOMMU model is 48-bit unless the server says otherwise.
    this.#ranges = [{ start: 0n, last: (1n << 48n) - 1n }];
    client.on('close', () => {
      this.#dropIoFds();
      this.emit('close');
    });
  }

  static async connect(socketPath: string, opts: VfioUserClientOptions = {}): Promise<VfioUserDevice> {
    const client = await VfioUserClient.connect(socketPath, opts);
    const dev = new VfioUserDevice(client, socketPath);
    try {
      await dev.#init();
    } catch (err) {
      client.close();
      throw err;
    }
    return dev;
  }

  async #init(): Promise<void> {
    const info = await this.client.deviceInfo();
    this.numRegions = info.num_regions;
    this.numIrqs = info.num_irqs;
    this.ids = await readPciIds((off, n) => this.client.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, off, n));
    const probe = async (feature: number, dir: number) => {
      try {
        await this.client.feature({ flags: VFIO_DEVICE_FEATURE_PROBE | dir, feature });
        return true;
      } catch {
        return false;
      }
    };
    const mappable = await probe(VFIO_DEVICE_FEATURE_DMA_BUF, VFIO_DEVICE_FEATURE_GET);
    const revocable = mappable && (await probe(VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE, VFIO_DEVICE_FEATURE_SET));
    this.capabilities = { mappableSlices: mappable, revocableSlices: revocable };
  }

  async region(index: number): Promise<DeviceRegion> {
    const r = await this.client.regionInfo(index);
    r.fd?.close(); // the broker never maps whole regions; slices come from sliceFds()
    return {
      index,
      flags: r.flags,
      size: r.size,
      offset: r.offset,
      ...(r.caps.sparseMmap
        ? { sparse: r.caps.sparseMmap.map((a) => ({ offset: a.offset, size: a.size })) }
        : {}),
      ...(r.caps.type ? { type: r.caps.type } : {}),
    };
  }

  read(index: number, offset: bigint | number, count: number): Promise<Uint8Array> {
    return this.client.regionRead(index, offset, count);
  }
  write(index: number, offset: bigint | number, data: Uint8Array): Promise<void> {
    return this.client.regionWrite(index, offset, data);
  }
  async read32(index: number, offset: number): Promise<number> {
    const b = await this.client.regionRead(index, offset, 4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
  }
  write32(index: number, offset: number, value: number): Promise<void> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    return this.client.regionWrite(index, offset, b);
  }
  async read64(index: number, offset: number): Promise<bigint> {
    const b = await this.client.regionRead(index, offset, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }
  write64(index: number, offset: number, value: bigint): Promise<void> {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value, true);
    return this.client.regionWrite(index, offset, b);
  }

  iovaRanges(): IovaRange[] {
    return this.#ranges;
  }

  dmaMap(m: DmaMapping): Promise<void> {
    const flags = (m.read ? VFIO_USER_F_DMA_REGION_READ : 0) | (m.write ? VFIO_USER_F_DMA_REGION_WRITE : 0);
    return this.client.dmaMap({ fd: m.fd, offset: m.offset, iova: m.iova, size: m.size, flags });
  }
  dmaUnmap(iova: bigint, size: bigint): Promise<void> {
    return this.client.dmaUnmap({ iova, size });
  }

  async irqCount(index: number): Promise<number> {
    return (await this.client.irqInfo(index)).count;
  }
  async setIrqs(index: number, start: number, fds: (Fd | null)[]): Promise<void> {
    // vfio-user carries eventfds only as SCM_RIGHTS, so assign and de-assign go in separate calls.
    for (let i = 0; i < fds.length; ) {
      const assign = fds[i] !== null;
      let n = 1;
      while (i + n < fds.length && (fds[i + n] !== null) === assign) n++;
      const slice = fds.slice(i, i + n) as Fd[];
      await this.client.setIrqs({
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        start: start + i,
        count: n,
        fds: assign ? slice : [],
      });
      i += n;
    }
  }
  disableIrqs(index: number): Promise<void> {
    return this.client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      index,
      start: 0,
      count: 0,
    });
  }
  reset(): Promise<void> {
    return this.client.reset();
  }

  async sliceFds(region: number, ranges: { offset: bigint; length: bigint }[]): Promise<Fd[]> {
    const data = encodeDmaBufPayload({
      region_index: region,
      open_flags: native.constants.O_RDWR as number,
      ranges,
    });
    const r = await this.client.feature({
      flags: VFIO_DEVICE_FEATURE_GET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF,
      data,
    });
    if (r.fds.length !== ranges.length) {
      for (const fd of r.fds) fd.close();
      throw Object.assign(
        new Error(`the device gave ${r.fds.length} slice fds for ${ranges.length} ranges`),
        {
          code: 'EPROTO',
        },
      );
    }
    return r.fds;
  }

  /**
   * Asked of the device once per region and kept: the ioeventfds are the device's for its lifetime, and a
   * lease grant should not cost a device round trip. Each call returns dups the caller owns.
   */
  async regionIoFds(index: number): Promise<RegionIoFds> {
    let cached = this.#ioFds.get(index);
    if (!cached) {
      cached = this.client.regionIoFds(index);
      this.#ioFds.set(index, cached);
      cached.catch(() => this.#ioFds.delete(index));
    }
    const { subRegions, fds } = await cached;
    const dups: Fd[] = [];
    try {
      for (const fd of fds) dups.push(fd.dup());
    } catch (err) {
      for (const fd of dups) fd.close();
      throw err;
    }
    return { subRegions, fds: dups };
  }

  #dropIoFds(): void {
    for (const p of this.#ioFds.values()) {
      p.then(
        (r) => {
          for (const fd of r.fds) fd.close();
        },
        () => {},
      );
    }
    this.#ioFds.clear();
  }

  async revokeSlice(fd: Fd): Promise<void> {
    const data = vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 });
    const r = await this.client.feature({
      flags: VFIO_DEVICE_FEATURE_SET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
      data,
      fds: [fd],
    });
    for (const f of r.fds) f.close();
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
