// A blocking sleep for the simulator's injected stalls and lags: the thread does nothing for `ms`, as a
// device that is slow at that point would. Never on a path that must stay responsive.

const parked = new Int32Array(new SharedArrayBuffer(4));

/** Block the calling thread for `ms` milliseconds (no-op for 0 or less). */
export function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(parked, 0, 0, ms);
}
