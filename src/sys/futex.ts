// Cross-process wait/wake on a 32-bit word of shared memory (a Mapping's
// buffer). Atomics.wait/notify only reach threads of this process; these use
// the shared futex keyed by the backing page, so they reach every process
// mapping the same memfd.
import { native } from './native.js';

export type FutexWaitResult = 'ok' | 'not-equal' | 'timed-out';

/**
 * Blocks the calling thread while the word at `index` (in 32-bit words)
 * still equals `expected`, until woken or `timeoutMs` passes (omit or
 * negative: no timeout). 'ok' may also be a spurious wake: re-check the word.
 */
export function futexWait(
  buf: SharedArrayBuffer,
  index: number,
  expected: number,
  timeoutMs = -1,
): FutexWaitResult {
  return native.futexWait(buf, index, expected, timeoutMs);
}

/** Wakes up to `count` waiters (all by default); returns how many were woken. */
export function futexWake(buf: SharedArrayBuffer, index: number, count = 0x7fffffff): number {
  return native.futexWake(buf, index, count);
}
