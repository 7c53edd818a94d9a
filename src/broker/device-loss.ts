// Losing the device: its connection closed (its server went away), or it
// stopped answering. A vfio-user device is reconnected with backoff and booted
// again, every lease ending meanwhile without asking the device anything; a
// device that cannot reconnect (kernel VFIO, or device.reconnect = false) is
// lost for good, and the broker says so ('device-lost': the daemon exits).

import { type Device, isReconnectable } from '../device/device.js';
import type { Driver } from '../drivers/driver.js';
import type { AuditLog } from './audit.js';
import type { BrokerConfig } from './config.js';
import type { DeviceLink } from './device-link.js';
import type { LeaseTable } from './leases.js';
import type { Recovery } from './recovery.js';

/** What of the broker device loss and recovery (recovery-hooks.ts) work on: the broker itself. */
export interface DeviceHost {
  readonly config: BrokerConfig;
  readonly device: Device;
  readonly driver: Driver;
  readonly leases: LeaseTable;
  readonly audit: AuditLog;
  readonly log: (msg: string) => void;
  emit(event: string, ...args: unknown[]): boolean;
}

export class DeviceLoss {
  /** Handling a lost device connection: reclaim, reconnect, boot. */
  #losing: Promise<void> | null = null;

  constructor(
    private readonly host: DeviceHost,
    private readonly link: DeviceLink,
    private readonly recovery: Recovery,
    /** Whether the broker is closing (then nothing is handled), and how a hang is recovered. */
    private readonly hooks: {
      closing: () => boolean;
      recover: (cause: 'device-hang', why: string) => Promise<void>;
    },
  ) {}

  /** The handling of a lost connection in progress (the broker's close() waits for it), or null. */
  get losing(): Promise<void> | null {
    return this.#losing;
  }

  /** The device connection closed (`reason`: why, when known). */
  closed(reason: Error | null): void {
    if (this.hooks.closing() || this.link.gone) return; // while gone, a failed attempt's connection closing is no news
    const why = reason?.message ?? 'the device connection closed';
    if (!isReconnectable(this.host.device) || !this.host.config.reconnect.enabled) {
      const how = isReconnectable(this.host.device)
        ? 'device.reconnect is off'
        : 'a kernel device is not reconnected';
      this.link.lost(why);
      this.host.leases.deviceGone = `the device is lost (${why}); ${how}`;
      this.host.log(`the device connection is gone (${why}); ${how}`);
      this.host.audit.write({ event: 'device-lost', reason: why });
      this.host.emit('device-lost', `${why}; ${how}`);
      return;
    }
    this.link.lost(why);
    this.#losing = this.#gone(this.host.device.endpoint, why)
      .catch((err: Error) => this.host.log(`handling the lost device failed: ${err.stack ?? err.message}`))
      .finally(() => {
        this.#losing = null;
      });
  }

  /**
   * The device's server went away. Grants stop at once (ENODEV, with the reason); every client is told (ERR)
   * and every lease ends without asking the device (it took its mappings and wiring with it); then the
   * broker reconnects with backoff and boots the device again, and grants resume.
   */
  async #gone(endpoint: string, why: string): Promise<void> {
    this.host.leases.deviceGone =
      `the device at ${endpoint} is gone since ${this.link.status().since} (${why}); ` +
      'the broker is reconnecting: lease again once it is back';
    this.host.audit.write({ event: 'device-gone', endpoint, reason: why });
    this.host.log(`the device connection is gone (${why}); reconnecting to ${endpoint}`);
    this.host.emit('device-gone', why);
    await this.recovery.running; // a recovery in progress fails fast now (or is abandoned): let it end first
    for (const l of this.host.leases.all()) l.notify('err');
    await this.host.leases.deviceLost(why);
    this.host.driver.deviceLost();
    if (!(await this.link.reconnect())) return; // the broker is closing
    this.host.leases.deviceGone = null;
    this.host.leases.suspended = null; // also a failed recovery's: the device was booted from scratch
    this.recovery.deviceBooted();
    const s = this.link.status();
    this.host.audit.write({ event: 'device-back', endpoint, attempts: s.attempts });
    this.host.log(`the device is back after ${s.attempts} attempt(s)`);
    this.host.emit('device-back');
  }

  /**
   * The device stopped answering (its server is frozen): a hang no device command can reach. Clients are told
   * (ERR) and the connection is dropped, so every lease ends without asking the device (as when its server
   * goes away) and the broker reconnects with backoff until the device answers again. A device that cannot
   * reconnect (kernel VFIO) gets a recovery instead, whose commands time out and are retried.
   */
  unresponsive(why: string): void {
    if (this.hooks.closing() || this.link.gone) return;
    this.host.audit.write({ event: 'device-unresponsive', reason: why });
    this.host.log(`the device is unresponsive: ${why}`);
    if (!isReconnectable(this.host.device) || !this.host.config.reconnect.enabled) {
      void this.hooks.recover('device-hang', why);
      return;
    }
    this.host.emit('hang', why);
    this.host.device.abandon(new Error(`the device is unresponsive (${why})`));
  }
}
