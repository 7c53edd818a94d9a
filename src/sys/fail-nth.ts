// Test-only fault injection, in the style of the kernel's iommufd fail_nth
// selftest: with DEVLEASE_FAIL_NTH set when the addon loads, every native
// call that makes a syscall (close excepted, as the kernel's fail_nth never
// fails a release) goes through a counter, and the nth one after failNth(n)
// fails with ENOMEM instead of running. Without the variable the addon
// object is used as it is: production pays nothing, not even a branch per
// call (native.ts decides once, at load).
import { SysError } from '../errors.js';
import type { NativeAddon } from './native.js';

/** Native functions never failed: releases, and fd bookkeeping that makes no syscall. */
const NEVER = new Set(['close', 'trackFd', 'untrackFd', 'setErrorClasses']);

let countdown = 0;
let fired: string | null = null;

/** Arms the hook: the nth native syscall from now fails (0 disarms). Throws if the hook is not installed. */
export function failNth(n: number): void {
  if (!installed)
    throw new Error('fail-nth is not installed: set DEVLEASE_FAIL_NTH (e.g. =0) before devlease loads');
  if (!Number.isInteger(n) || n < 0) throw new Error(`failNth: n must be a non-negative integer, got ${n}`);
  countdown = n;
  fired = null;
}

/** The call that failed since the last failNth(), if any. */
export function failNthFired(): string | null {
  return fired;
}

let installed = false;

export function failNthInstalled(): boolean {
  return installed;
}

export function withFailNth(addon: NativeAddon, initial: string): NativeAddon {
  installed = true;
  const n = Number(initial);
  if (Number.isInteger(n) && n > 0) countdown = n;
  const wrapped: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(addon)) {
    if (typeof value !== 'function' || NEVER.has(name)) {
      wrapped[name] = value;
      continue;
    }
    const fn = value as (...args: unknown[]) => unknown;
    wrapped[name] = (...args: unknown[]) => {
      if (countdown > 0 && --countdown === 0) {
        fired = name;
        // A SysError, as the addon throws: code that tells syscall errors from bugs (isSysError) must
        // take an injected failure for a real one.
        throw Object.assign(
          new SysError(name, 'ENOMEM', 'Cannot allocate memory (injected by DEVLEASE_FAIL_NTH)', 12),
          {
            injected: true,
          },
        );
      }
      return fn.apply(addon, args);
    };
  }
  return wrapped as unknown as NativeAddon;
}
