// What the broker reads off the device for operators, never on a client's hot path: at a metrics scrape or
// a `devlease top` refresh. SA-1 keeps per-queue counters in QCFG (Q_COMPLETED: descriptors completed,
// Q_BYTES: bytes moved; datasheet §2.2), so a lease's work is the counters of its queue. The device's
// HEARTBEAT register advances while its firmware runs: the sampler notes when it last saw it change.
//
// Devices without such registers (edu, generic) give no counters and no heartbeat: null, not zero.
import type { Device } from '../../device/device.js';
import type { Driver } from '../../drivers/driver.js';
import { BAR0, Q, qcfg, REG } from '../../hw/sa1/regs.js';
import type { Lease } from '../lease.js';

export interface LeaseCounters {
  /** Descriptors the lease's queue completed since it was granted (the queue is reset at grant). */
  completed: bigint;
  bytes: bigint;
}

export class DeviceSampler {
  readonly #device: Device;
  readonly #driver: Driver;
  #heartbeat: { value: number; changedAt: number } | null = null;

  constructor(device: Device, driver: Driver) {
    this.#device = device;
    this.#driver = driver;
  }

  get #sa1(): boolean {
    return this.#driver.name === 'sa1';
  }

  /** The lease's queue counters, or null (not an SA-1 queue lease, or the device did not answer). */
  async leaseCounters(lease: Lease): Promise<LeaseCounters | null> {
    const q = lease.resources.queue;
    if (!this.#sa1 || q === null || !lease.live) return null;
    try {
      const [completed, bytes] = await Promise.all([
        this.#device.read64(BAR0, qcfg(q, Q.COMPLETED)),
        this.#device.read64(BAR0, qcfg(q, Q.BYTES)),
      ]);
      return { completed, bytes };
    } catch {
      return null; // the device connection is going: the broker handles that, the sample just has no value
    }
  }

  /**
   * Seconds since HEARTBEAT was last seen to change (0 when it changed since the previous sample), or null
   * when the device has none, or did not answer and was never read. The first sample counts as a change.
   */
  async heartbeatAgeSeconds(now = Date.now()): Promise<number | null> {
    if (!this.#sa1) return null;
    let value: number;
    try {
      value = await this.#device.read32(BAR0, REG.HEARTBEAT);
    } catch {
      // A device that does not answer was not seen to change either: the age grows from the last change seen.
      // (It was null, which the metric showed as 0, a heartbeat just seen, for as long as the device was stuck.)
      return this.#heartbeat === null ? null : (now - this.#heartbeat.changedAt) / 1000;
    }
    if (this.#heartbeat === null || this.#heartbeat.value !== value)
      this.#heartbeat = { value, changedAt: now };
    return (now - this.#heartbeat.changedAt) / 1000;
  }
}
