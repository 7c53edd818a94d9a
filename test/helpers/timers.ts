// What became of the timers some code armed: fired, cleared, or still pending. For a test of "did not wait"
// that must not be a wall-clock bound (those flake under load): a wait cut short shows as its timer cleared,
// one sat out as its timer fired. Works for code running in this process (the broker in a rig).

/** A timer armed by the watched code. */
export interface WatchedTimer {
  delay: number;
  state: 'pending' | 'fired' | 'cleared';
}

/**
 * Watch the timers armed through the global setTimeout by code in `file` (a path fragment of a compiled module,
 * matched against the arming call's stack), with `delay` ms if given, until stop().
 */
export function watchTimers(file: string, delay?: number) {
  const { setTimeout: set, clearTimeout: clear } = globalThis;
  const byHandle = new Map<unknown, WatchedTimer>();
  const timers: WatchedTimer[] = [];
  globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    if ((delay !== undefined && ms !== delay) || !new Error().stack?.includes(file))
      return set(fn, ms, ...args);
    const record: WatchedTimer = { delay: ms ?? 0, state: 'pending' };
    const t = set(
      (...a: unknown[]) => {
        record.state = 'fired';
        byHandle.delete(t);
        fn(...a);
      },
      ms,
      ...args,
    );
    byHandle.set(t, record);
    timers.push(record);
    return t;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((t?: Parameters<typeof clear>[0]) => {
    const record = byHandle.get(t);
    if (record) {
      record.state = 'cleared';
      byHandle.delete(t);
    }
    clear(t);
  }) as typeof clearTimeout;
  return {
    /** Every timer armed so far, in order. */
    timers: (): readonly WatchedTimer[] => timers,
    /** How many were armed. */
    armed: () => timers.length,
    /** How many are still pending (neither cleared nor fired). */
    live: () => timers.filter((t) => t.state === 'pending').length,
    stop() {
      globalThis.setTimeout = set;
      globalThis.clearTimeout = clear;
    },
  };
}
