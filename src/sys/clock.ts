// A monotonic clock in milliseconds (a double) for deadlines and spin bounds.
//
// Not the global `performance`: its first use loads node:perf_hooks and nine internal modules, ~1–2 ms of
// CPU that a fresh client process paid at its first queue wait (issue 16). process.hrtime() loads nothing,
// costs the same per call warm (~55 ns here, as performance.now()), and in an optimized spin loop V8 keeps
// its two-element array off the heap: 5 M reads made 4 scavenges against performance.now()'s 466.

/** Milliseconds on CLOCK_MONOTONIC (an arbitrary origin): compare two readings, never show one. */
export function monotonicMs(): number {
  const t = process.hrtime();
  return t[0] * 1e3 + t[1] / 1e6;
}
