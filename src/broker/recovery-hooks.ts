// What the broker does around a device recovery (recovery.ts runs the
// attempts): before the first, suspend grants, tell every client (ERR) and
// reclaim every lease; after each failed attempt, audit it, and after the
// last, leave grants suspended saying why; once back, lease again.

import { DEFAULT_TIMEOUT_MS as VFIO_USER_REQUEST_TIMEOUT_MS } from '../vfio/user/client.js';
import type { DeviceHost } from './device-loss.js';
import type { RecoveryCause, RecoveryDeadlines, RecoveryHooks } from './recovery.js';

/**
 * Besides a step's own waits, one device request that runs out of its deadline (vfio-user's 5 s; a failed
 * request ends the step, so one per step). Kernel VFIO requests are synchronous ioctls, faster in practice.
 */
const REQUEST_ALLOWANCE_MS = VFIO_USER_REQUEST_TIMEOUT_MS;

/** The recovery hooks of the broker `host`; `abandoned`: stop now (closing, or the connection is gone). */
export function recoveryHooks(host: DeviceHost, abandoned: () => boolean): RecoveryHooks {
  return {
    prepare: (cause, why) => prepare(host, cause, why),
    attempt: () => host.driver.recover(),
    abandoned,
    attemptFailed: (cause, err, attempt, final) => attemptFailed(host, cause, err, attempt, final),
    succeeded: (cause, attempts) => {
      host.audit.write({ event: 'device-recovered', cause, attempts });
      host.emit('recovered');
      host.leases.suspended = null;
    },
    deadlines: () => deadlines(host),
  };
}

/**
 * The reclaim waits for each lease's quiesce and its queue's preparation for the next grant (each bounded by
 * lifetime.quiesce_timeout_ms, leases in parallel); an attempt for the driver's recover() waits.
 */
function deadlines(host: DeviceHost): RecoveryDeadlines {
  return {
    prepareMs: 2 * host.config.lifetime.quiesceTimeoutMs + REQUEST_ALLOWANCE_MS,
    attemptMs: (host.driver.recoverWaitsMs ?? 0) + REQUEST_ALLOWANCE_MS,
  };
}

/** Before a recovery's first attempt: suspend grants, tell every client (ERR), reclaim every lease. */
async function prepare(host: DeviceHost, cause: RecoveryCause, why: string): Promise<void> {
  host.leases.suspended =
    cause === 'owner-reset'
      ? 'the device is being reset by its owner: lease again shortly'
      : `the device is recovering (${cause}): lease again shortly`;
  host.audit.write({ event: cause, reason: why });
  if (cause !== 'owner-reset') host.emit(cause === 'device-hang' ? 'hang' : 'reset', why);
  for (const l of host.leases.all()) l.notify('err');
  await host.leases.reclaimAll(`${cause}: ${why}`);
}

function attemptFailed(
  host: DeviceHost,
  cause: RecoveryCause,
  err: Error,
  attempt: number,
  final: boolean,
): void {
  const { attempts } = host.config.recovery;
  host.audit.write({ event: 'recovery-attempt-failed', cause, attempt, error: err.message });
  host.log(`recovery attempt ${attempt} of ${attempts} failed: ${err.message}`);
  if (!final) return;
  // Leave grants suspended: leasing a device that did not come back would only fail later.
  host.leases.suspended =
    `the device did not recover: ${err.message} (${attempt} attempt(s); retrying every ` +
    `${host.config.recovery.backoffMaxMs} ms until it does; devlease reset tries at once)`;
  host.audit.write({ event: 'recovery-failed', cause, attempts: attempt, error: err.message });
}
