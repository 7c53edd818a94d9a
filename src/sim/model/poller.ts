// What the device's poller asks before it sleeps, and does when it wakes (datasheet §2.3 rev 2, doorbell
// notification; §10). The device worker (host/worker.ts) calls these between rounds. They decide only
// whether and how the poller may sleep (KICK_NEEDED in the queue pages, whether any queue or a firmware
// load could use a round); the model's actions stay in device.ts.

import type { Sa1Device } from './device.js';
import type { Queue } from './queue.js';

/** What armKicks() found (see there). */
export const ARMED = 0;
export const BACKLOG = 1;
export const RACED = 2;
export type ArmResult = typeof ARMED | typeof BACKLOG | typeof RACED;

/**
 * The poller is about to sleep: set KICK_NEEDED on every queue a doorbell could start, then read each
 * SQ_TAIL once more. RACED: a doorbell arrived since the last round (do not sleep); BACKLOG: a queue holds
 * doorbells it cannot fetch yet (full CQ: CQ_HEAD moves without a kick, so keep to the short idle poll);
 * ARMED: nothing waits, sleep until kicked.
 */
export function armKicks(device: Sa1Device): ArmResult {
  let result: ArmResult = ARMED;
  if (!device.canRun()) return result;
  const flagged = flaggedBy(device);
  for (const q of device.watchedQueues) {
    if (!q.enabled || q.error) continue;
    flagged.push(q);
    if (q.setKickNeeded(true)) result = RACED;
    else if (result === ARMED && q.tailSeen !== q.sqHead) result = BACKLOG;
  }
  return result;
}

/**
 * The queues armKicks() flagged, per device, until disarmKicks(): the wake-up clears just those (one store
 * each) instead of looking at every queue, cold, while a kicked client waits.
 */
const armed = new WeakMap<Sa1Device, Queue[]>();

function flaggedBy(device: Sa1Device): Queue[] {
  let flagged = armed.get(device);
  if (flagged === undefined) {
    flagged = [];
    armed.set(device, flagged);
  }
  return flagged;
}

/** Awake again: clear KICK_NEEDED wherever it is set. */
export function disarmKicks(device: Sa1Device): void {
  const flagged = armed.get(device);
  if (flagged === undefined) return;
  for (const q of flagged) if (q.kickNeeded) q.setKickNeeded(false);
  flagged.length = 0;
}

/**
 * Could a doorbell be acted on right now? False when the device cannot run or no queue is enabled and
 * error-free: then only an owner command can change anything, and the worker may sleep until one arrives.
 */
export function pollingNeeded(device: Sa1Device): boolean {
  if (device.firmware.loadPending) return true;
  if (!device.canRun()) return false;
  return device.watchedQueues.some((q) => q.enabled && !q.error);
}
