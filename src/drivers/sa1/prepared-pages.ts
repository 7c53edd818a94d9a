// Queue pages prepared at reclaim (issue 16): the reclaim asks the device for the page's fresh slice fd in its
// last batch, behind the unmaps (Device.prepareSliceFds; nothing waits for it), so the next
// grant of the queue takes it without a device request. Bounded by lifetime.prepared_slice_fds (the device refuses to hold more; then the grant
// asks, as without). The pool (pools.ts) grants the most recently prepared queue first, so the fds are used.

import type { Device } from '../../device/device.js';
import { BAR2 } from '../../hw/sa1/regs.js';
import type { DriverConfig, LeaseResources } from '../driver.js';

export class PreparedPages {
  readonly #dev: Device;
  readonly #cfg: DriverConfig;
  /** Queues whose reclaim asked for their page's next fd, until that reclaim's prepare() (done()) or a drop(). */
  readonly #asked = new Set<number>();

  constructor(dev: Device, cfg: DriverConfig) {
    this.#dev = dev;
    this.#cfg = cfg;
  }

  /** Whether the device still holds queue `q`'s prepared page fd (pages `stride` bytes apart). */
  holds(q: number, stride: bigint): boolean {
    return this.#dev.hasPreparedSliceFds?.(BAR2, [{ offset: BigInt(q) * stride, length: stride }]) ?? false;
  }

  /**
   * A reclaim of `res` quiesced its queue and revoked its slices (Driver.prepareAhead): ask for its page's fresh
   * fd now, served after the revokes, so the answer is the page's new memory; any later revoke drops it again
   * (vfio-user-slices.ts). The page only: the next grant of the queue asks exactly its range, while
   * device-memory granules go to whichever lease fits them first.
   */
  ask(res: LeaseResources): void {
    const d = this.#dev;
    const cap = this.#cfg.lifetime.preparedSliceFds ?? 0;
    const page = res.slices.find((s) => s.region === BAR2 && s.mappable !== false);
    const asked =
      cap > 0 &&
      page !== undefined &&
      d.prepareSliceFds !== undefined &&
      d.capabilities.mappableSlices &&
      d.capabilities.revocableSlices &&
      this.#cfg.lifetime.revoke &&
      d.prepareSliceFds(BAR2, [{ offset: page.offset, length: page.unit }], cap);
    if (asked) this.#asked.add(res.queue!);
    else this.#asked.delete(res.queue!);
  }

  /** The reclaim of `q` ended well (Driver.prepare): whether its page's fd was asked for. */
  done(q: number): boolean {
    return this.#asked.delete(q);
  }

  /** Drop everything prepared (boot, reset, loss); a reclaim that went wrong drops its own (lease-reclaim.ts). */
  drop(): void {
    this.#asked.clear();
    this.#dev.forgetPreparedSliceFds?.();
  }
}
