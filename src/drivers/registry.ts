// The drivers devlease has, in the order they are tried: the first whose
// matches() accepts the device drives it. generic matches anything, so it
// comes last. The broker asks here; it knows no driver by name.

import type { Device } from '../device/device.js';
import { DevleaseError } from '../errors.js';
import type { DriverFactory } from './driver.js';
import { eduDriverFactory } from './edu.js';
import { genericDriverFactory } from './generic.js';
import { pageSliceDriverFactory } from './page-slices.js';
import { sa1DriverFactory } from './sa1/driver.js';

export const DRIVERS: readonly DriverFactory[] = [
  sa1DriverFactory,
  eduDriverFactory,
  pageSliceDriverFactory,
  genericDriverFactory,
];

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

/**
 * The factory of the driver for `device`, or null when none matches. `own`: drivers of one's own (the config's
 * device.driver), tried before the built-in ones. A configured driver that does not match the device is an
 * error, not a fall-through to generic: the operator asked for that driver, and a generic lease of a device
 * they wrote a driver for would hand clients a device without its driver's care.
 */
export function driverFactoryFor(device: Device, own: readonly DriverFactory[] = []): DriverFactory | null {
  if (own.length > 0) {
    const f = own.find((d) => d.matches(device));
    if (f) return f;
    const ids = `${hex4(device.ids.vendor)}:${hex4(device.ids.device)}`;
    throw new DevleaseError(
      'ENODEV',
      `the configured driver ${own.map((d) => `'${d.name}'`).join(', ')} does not match the device (PCI ids ${ids})`,
    );
  }
  return DRIVERS.find((f) => f.matches(device)) ?? null;
}
