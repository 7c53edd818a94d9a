// What the broker does around a device recovery (recovery.ts runs the
// attempts): before the first, suspend grants, tell every client (ERR) and
// reclaim every lease; after each failed attempt, audit it, and after the
// last, leave grants suspended saying why; once back, lease again.

import { DEFAULT_TIMEOUT_MS as VFIO_USER_REQUEST_TIMEOUT_MS } from '../vfio/user/client.js';
import type { DeviceHost } from './device-loss.js';
import type { RecoveryCause, RecoveryDeadlines, RecoveryHooks } from './recovery.js';

/** The recovery hooks of the broker `host`; `abandoned`: stop now (closing, or the connection is gone). */
export function recoveryHooks(host: DeviceHost, abandoned: () => boolean): RecoveryHooks {
  return {
    prepare: (cause, why) => prepare(host, cause, why),
    attempt: () => host.driver.recover(),
    abandoned,
    attemptFailed: (cause, err, attempt, final) => attemptFailed(host, cause, err, attempt, final),
    succeeded: (cause, attempts) => {
      // Grants resume first: what reports it (a 'recovered' listener) cannot keep them suspended.
      host.leases.suspended = null;
      host.audit.write({ event: 'device-recovered', cause, attempts });
      host.emit('recovered');
    },
    deadlines: () => deadlines(host),
  };
}

/**
 * The estimate's parts (recoveryBoundMs() adds them up). The reclaim, leases in parallel: a session request in
 * progress first (a DMA map's policy hook, policy.hook_timeout_ms), then the lease's quiesce and its queue's
 * preparation for the next grant (each lifetime.quiesce_timeout_ms). An attempt: the driver's recover()
 * waits. The reclaim and each attempt also count one device request that runs out its deadline (the
 * device's own, as it was opened: vfio-user's 5 s unless an embedder set timeoutMs; kernel VFIO requests are
 * synchronous ioctls with none, counted as 5 s). Not counted, so an estimate and not a guarantee: more device requests
 * in flight when the reclaim starts, or failing one after another; scrub's writes of device memory (only
 * where slices were not revoked); an ioctl that blocks.
 */
function deadlines(host: DeviceHost): RecoveryDeadlines {
  const request = host.device.requestTimeoutMs ?? VFIO_USER_REQUEST_TIMEOUT_MS;
  const { lifetime, policy } = host.config;
  return {
    prepareMs: policy.hookTimeoutMs + 2 * lifetime.quiesceTimeoutMs + request,
    attemptMs: (host.driver.recoverWaitsMs ?? 0) + request,
  };
}

/** The broker's event for each recovery cause but the owner's own reset. */
const BROKER_EVENT = {
  'device-hang': 'hang',
  'device-reset': 'reset',
  'device-error': 'device-error',
} as const;

/** Before a recovery's first attempt: suspend grants, tell every client (ERR), reclaim every lease. */
async function prepare(host: DeviceHost, cause: RecoveryCause, why: string): Promise<void> {
  host.leases.suspended =
    cause === 'owner-reset'
      ? 'the device is being reset by its owner: lease again shortly'
      : `the device is recovering (${cause}): lease again shortly`;
  host.audit.write({ event: cause, reason: why });
  if (cause !== 'owner-reset') host.emit(BROKER_EVENT[cause], why);
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
