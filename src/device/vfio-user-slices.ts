// Slice fds over vfio-user: asked with the dma-buf feature (11), revoked with feature 13 (a devlease/SA-1
// extension, docs/PROTOCOL.md), and asked ahead of their grant (prepared-slices.ts). Split from
// vfio-user-device.ts, which owns one of these per device and drops what is prepared with its connection.

import type { Fd } from '../sys/fd.js';
import { native } from '../sys/native.js';
import { encodeDmaBufPayload, encodeDmaBufRevokePayload } from '../vfio/uapi/payloads.js';
import {
  DMA_BUF_REVOKE_FLAG_DETACH,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
} from '../vfio/uapi/vfio.js';
import type { VfioUserClient } from '../vfio/user/client.js';
import type { RevokeOptions } from './device.js';
import { PreparedSlices, type SliceRange } from './prepared-slices.js';

export class VfioUserSlices {
  /** The device's current connection. */
  readonly #client: () => VfioUserClient;
  readonly #prepared = new PreparedSlices();

  constructor(client: () => VfioUserClient) {
    this.#client = client;
  }

  /** Prepared fds held or on their way. */
  get preparedCount(): number {
    return this.#prepared.size;
  }

  /** Prepared fds this process holds (answered). */
  get preparedHeld(): number {
    return this.#prepared.held;
  }

  /** A prepared fd when there is one, else the device is asked in this tick (so a batch joins the request). */
  get(region: number, ranges: SliceRange[]): Promise<Fd[]> {
    const prepared = this.#prepared.take(region, ranges);
    const fds = prepared
      ? prepared.then((fds) => fds ?? this.#ask(region, ranges))
      : this.#ask(region, ranges);
    return fds.then((fds) => {
      this.#prepared.handedOut(region, ranges, fds);
      return fds;
    });
  }

  /** Device.prepareSliceFds: asked now, on the wire behind what was sent before (a reclaim's revoke). */
  prepare(region: number, ranges: SliceRange[], cap: number): boolean {
    return this.#prepared.prepare(region, ranges, cap, () => this.#ask(region, ranges));
  }

  hasPrepared(region: number, ranges: SliceRange[]): boolean {
    return this.#prepared.has(region, ranges);
  }

  /** Close what is prepared over `ranges` of `region`, or everything. */
  forgetPrepared(region?: number, ranges?: SliceRange[]): void {
    if (region === undefined || !ranges) this.#prepared.clear();
    else this.#prepared.dropOver(region, ranges);
  }

  async revoke(fd: Fd, opts: RevokeOptions = {}): Promise<void> {
    // What was prepared over this slice before now is its old memory; what is prepared after this request (a
    // reclaim's, served after it) is its new memory only if the revoke succeeds.
    this.#prepared.revoking(fd);
    const data = encodeDmaBufRevokePayload(0, (opts.fault ?? true) ? 0 : DMA_BUF_REVOKE_FLAG_DETACH);
    let r: Awaited<ReturnType<VfioUserClient['feature']>>;
    try {
      r = await this.#client().feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data,
        fds: [fd],
      });
    } catch (err) {
      this.#prepared.revoking(fd);
      throw err;
    }
    for (const f of r.fds) f.close();
  }

  async #ask(region: number, ranges: SliceRange[]): Promise<Fd[]> {
    const data = encodeDmaBufPayload({
      region_index: region,
      open_flags: native.constants.O_RDWR as number,
      ranges,
    });
    const r = await this.#client().feature({
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
}
