// Test-only fault injection, in the style of the kernel's iommufd fail_nth
// selftest: with DEVLEASE_FAIL_NTH set when the addon loads, every native
// call that makes a syscall (close excepted, as the kernel's fail_nth never
// fails a release) goes through a counter, and the nth one after failNth(n)
// fails with ENOMEM instead of running. Without the variable the addon
// object is used as it is: production pays nothing, not even a branch per
// call (native.ts decides once, at load).
import { SysError } from '../errors.js';
import type { NativeAddon } from './native.js';

/** Native functions never failed: releases, and bookkeeping or queries that make no syscall. */
const NEVER = new Set([
  'close',
  'closeReceived',
  'closesPending',
  'closesQueuedFrom',
  'mappingUnmap',
  'mappingUnmapMany',
  'mappingRevoked',
  'mappingAddress',
  'pollSharedStop',
  'pollSharedRef',
  'trackFd',
  'untrackFd',
  'setErrorClasses',
]);

let countdown = 0;
let fired: string | null = null;

/** Arms the hook: the nth native syscall from now fails (0 disarms). Throws if the hook is not installed. */
export function failNth(n: number): void {
  if (!installed)
    throw new Error('fail-nth is not installed: set DEVLEASE_FAIL_NTH (e.g. =0) before devlease loads');
  if (!Number.isInteger(n) || n < 0) throw new Error(`failNth: n must be a non-negative integer, got ${n}`);
  countdown = n;
  if (n === 0) callName = null; // disarms failCall() too
  fired = null;
}

/** The call that failed since the last failNth(), if any. */
export function failNthFired(): string | null {
  return fired;
}

/** failCall(): the native function whose `callCountdown`th call from now fails. */
let callName: string | null = null;
let callCountdown = 0;

/**
 * Arms the hook by name, for a focused test of one site: the kth call of native function `name` from now
 * fails (counted apart from failNth's count). Throws if the hook is not installed or `name` is no native function.
 */
export function failCall(name: string, k = 1): void {
  if (!installed)
    throw new Error('fail-nth is not installed: set DEVLEASE_FAIL_NTH (e.g. =0) before devlease loads');
  if (!names.has(name)) throw new Error(`failCall: '${name}' is not a native function the hook can fail`);
  if (!Number.isInteger(k) || k < 1) throw new Error(`failCall: k must be a positive integer, got ${k}`);
  callName = name;
  callCountdown = k;
  fired = null;
}

let installed = false;
const names = new Set<string>();

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
    names.add(name);
    wrapped[name] = (...args: unknown[]) => {
      const byCount = countdown > 0 && --countdown === 0;
      const byName = callName === name && --callCountdown === 0;
      if (byName) callName = null;
      if (byCount || byName) {
        fired = name;
        // DEVLEASE_FAIL_NTH_TRACE=1: where the failed call was made, to narrow a walk's finding to its site.
        if (process.env.DEVLEASE_FAIL_NTH_TRACE)
          process.stderr.write(`fail-nth: ${name} fails at\n${new Error().stack}\n`);
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
