// Atomics.waitAsync (ES2024; in V8, so in every Node this runs on) typed for the ES2022 lib the project
// compiles against: a wait on a shared word that does not block the thread.

export type WaitAsyncResult =
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };

type WaitAsync = (words: Int32Array, index: number, value: number, timeoutMs?: number) => WaitAsyncResult;

export const waitAsync: WaitAsync = (words, index, value, timeoutMs) =>
  (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync(words, index, value, timeoutMs);
