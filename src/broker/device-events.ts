// What the broker does with each event of its driver and device, wired once
// when it starts (or takes over in an upgrade), after everything they touch
// exists: a fault goes to its lease, a hang, a reset behind the broker's back
// or a reported error to a recovery, a device gone or unresponsive to device
// loss (device-loss.ts).

import type { DeviceHost } from './device-loss.js';
import type { RecoveryCause } from './recovery.js';

export interface DeviceEventHandlers {
  /** The device hung, was reset behind the broker's back, or reported an error: recover it. */
  recover(cause: Exclude<RecoveryCause, 'owner-reset'>, why: string): Promise<void>;
  /** The device stopped answering. */
  unresponsive(why: string): void;
  /** The device connection closed (its server went away, or the kernel took the device back). */
  closed(reason: Error | null): void;
}

export function wireDeviceEvents(host: DeviceHost, on: DeviceEventHandlers): void {
  const { driver, device, audit, leases } = host;
  driver.on('fault', (f) => leases.fault(f));
  driver.on('faults-lost', (lost: number) => audit.write({ event: 'device-faults-lost', lost }));
  driver.on('hang', (why: string) => void on.recover('device-hang', why));
  driver.on('device-reset', (why: string) => void on.recover('device-reset', why));
  driver.on('unresponsive', (why: string) => on.unresponsive(why));
  driver.on('error', (err: Error) => host.log(`driver: ${err.message}`));
  device.on('close', (reason?: Error | null) => on.closed(reason ?? null));
  // The kernel wants the device back (an unbind): let it go as a lost device (the daemon exits, closing it).
  device.on('release-requested', (why: string) => on.closed(new Error(why)));
  // The kernel reports an AER error of the device: its state can no longer be trusted; recover it.
  device.on('error-reported', (why: string) => void on.recover('device-error', why));
}
