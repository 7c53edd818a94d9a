// The device model of the peer-DMA tests (user-peer-dma*.test.ts): one BAR whose doorbell makes it DMA_READ the
// client's memory, the PeerDma it was given kept for the tests to drive; and client memory whose accesses wait.
import assert from 'node:assert/strict';
import { VfioError } from '../../../src/errors.js';
import { VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE } from '../../../src/vfio/uapi/vfio.js';
import type { DmaMapRequest, VfioUserDeviceModel } from '../../../src/vfio/user/device-model.js';
import type { PeerDma } from '../../../src/vfio/user/peer-dma.js';
import * as P from '../../../src/vfio/user/protocol.js';

export const RW = P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE;
export const IOVA = 0x100000n;
export const SIZE = 0x20000;
/** Long enough never to pass in a test that expects a reply. */
export const LONG = 20_000;

/**
 * One BAR (region 0). A REGION_WRITE of {u64 addr, u32 count} there makes the model DMA_READ that much of the
 * client's memory before it answers (what a device's doorbell does); `fetched` holds the bytes.
 */
export class PeerModel implements VfioUserDeviceModel {
  dma: PeerDma | null = null;
  maps: DmaMapRequest[] = [];
  fetched: Uint8Array | null = null;
  fetchTimeoutMs = LONG;
  /** What happened, in order: the EPIPE of a waiting read must come before disconnected(). */
  events: string[] = [];
  peerDma(dma: PeerDma): void {
    this.dma = dma;
  }
  deviceInfo() {
    return { flags: 0, num_regions: 1, num_irqs: 0 };
  }
  regionInfo(index: number) {
    if (index !== 0) throw new VfioError('EINVAL', `no region ${index}`);
    return {
      index,
      flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
      size: 0x1000n,
      offset: 0n,
    };
  }
  regionRead(_index: number, _offset: bigint, count: number): Uint8Array {
    return new Uint8Array(count);
  }
  async regionWrite(_index: number, _offset: bigint, data: Uint8Array): Promise<void> {
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const dma = this.dma as PeerDma;
    this.fetched = await dma.read(view.getBigUint64(0, true), view.getUint32(8, true), this.fetchTimeoutMs);
  }
  dmaMap(req: DmaMapRequest): void {
    assert.equal(req.fd, null, 'the maps here have no fd');
    this.maps.push(req);
  }
  dmaUnmap(): void {}
  irqInfo(): never {
    throw new VfioError('EINVAL', 'no interrupts');
  }
  setIrqs(): never {
    throw new VfioError('EINVAL', 'no interrupts');
  }
  reset(): never {
    throw new VfioError('ENOTSUP', 'no reset');
  }
  feature(): never {
    throw new VfioError('ENOTSUP', 'no features');
  }
  disconnected(): void {
    this.events.push('disconnected');
  }
}

/** A promise the test opens: the client's memory callbacks wait on it (a client slow or never answering). */
export function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return { opened, open };
}

/** Memory behind a map without an fd whose accesses wait for `g`; `calls` counts those the client served. */
export function gatedMemory(buf: Uint8Array, g: { opened: Promise<void> }) {
  const m = {
    calls: 0,
    async read(offset: bigint, count: number) {
      m.calls++;
      await g.opened;
      return buf.slice(Number(offset), Number(offset) + count);
    },
    async write(offset: bigint, data: Uint8Array) {
      m.calls++;
      await g.opened;
      buf.set(data, Number(offset));
    },
  };
  return m;
}
