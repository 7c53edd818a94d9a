// Whether the SA-1 device is well, read from BAR0: the registers the status report shows, the check that a
// recovery brought it back (not HUNG, HEARTBEAT moving), and the check that a device taken over in a broker
// upgrade is as the old broker left it. Reads only, each bounded; the driver (driver.ts) decides what
// follows from them.

import type { Device } from '../../device/device.js';
import { BAR0, Q, Q_CTRL, qcfg, REG, STATUS } from '../../hw/sa1/regs.js';
import type { LeaseResources } from '../driver.js';
import { pollUntil } from '../poll.js';
import { FIRMWARE_LOAD_TIMEOUT_MS } from './boot.js';
import { DEVICE_RESET_TIMEOUT_MS } from './device-commands.js';

/** Bound on HEARTBEAT moving once a recovery brought the device back (it advances every 10 ms). */
const HEARTBEAT_ALIVE_TIMEOUT_MS = 1000;

/** The driver's recover() waits, one after another: device reset, firmware load, heartbeat moving again. */
export const RECOVER_WAITS_MS =
  DEVICE_RESET_TIMEOUT_MS + FIRMWARE_LOAD_TIMEOUT_MS + HEARTBEAT_ALIVE_TIMEOUT_MS;

/** The device's own part of the driver's status report: STATUS bits by name, firmware, heartbeat, faults. */
export async function readStatusRegisters(d: Device): Promise<Record<string, unknown>> {
  const st = await d.read32(BAR0, REG.STATUS);
  return {
    status: Object.entries(STATUS)
      .filter(([, bit]) => st & bit)
      .map(([n]) => n),
    fwStatus: await d.read32(BAR0, REG.FW_STATUS),
    fwVersion: await d.read32(BAR0, REG.FW_VERSION),
    heartbeat: await d.read32(BAR0, REG.HEARTBEAT),
    faultHead: await d.read32(BAR0, REG.FAULT_HEAD),
  };
}

/** Throws unless STATUS.HUNG is clear and HEARTBEAT advances (it does at least every 10 ms, §2.1). */
export async function checkAlive(d: Device): Promise<void> {
  if ((await d.read32(BAR0, REG.STATUS)) & STATUS.HUNG)
    throw new Error('sa1: the device hung again during recovery (STATUS.HUNG)');
  const first = await d.read32(BAR0, REG.HEARTBEAT);
  await pollUntil({
    what: 'sa1: HEARTBEAT to advance after recovery',
    read: () => d.read32(BAR0, REG.HEARTBEAT),
    done: (v) => v !== first,
    timeoutMs: HEARTBEAT_ALIVE_TIMEOUT_MS,
  });
}

/** The device must still be as the old broker left it: running, and every leased queue enabled. */
export async function checkAsLeft(d: Device, leased: readonly LeaseResources[]): Promise<void> {
  const status = await d.read32(BAR0, REG.STATUS);
  if (status & STATUS.HUNG) throw new Error('sa1: the device reports HUNG: not taking it over as it is');
  for (const r of leased) {
    const ctrl = await d.read32(BAR0, qcfg(r.queue!, Q.CTRL));
    if (!(ctrl & Q_CTRL.ENABLE))
      throw new Error(
        `sa1: queue ${r.queue} is leased but not enabled on the device (Q_CTRL 0x${ctrl.toString(16)})`,
      );
  }
}
