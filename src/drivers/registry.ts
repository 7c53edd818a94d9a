// The drivers devlease has, in the order they are tried: the first whose
// matches() accepts the device drives it. generic matches anything, so it
// comes last. The broker asks here; it knows no driver by name.

import type { Device } from '../device/device.js';
import type { DriverFactory } from './driver.js';
import { eduDriverFactory } from './edu.js';
import { genericDriverFactory } from './generic.js';
import { sa1DriverFactory } from './sa1/driver.js';

export const DRIVERS: readonly DriverFactory[] = [sa1DriverFactory, eduDriverFactory, genericDriverFactory];

/** The factory of the driver for `device`, or null when none matches. */
export function driverFactoryFor(device: Device): DriverFactory | null {
  return DRIVERS.find((f) => f.matches(device)) ?? null;
}
