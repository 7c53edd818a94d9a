// Fd-leak accounting for tests: the project standard is that every test file
// leaves the process with the same set of open descriptors it started with.
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';

/** Number of open descriptors of this process (the /proc/self/fd listing itself excluded). */
export function openFdCount(): number {
  return openFds().size;
}

/** Open descriptors of this process as number -> link target (for leak diagnostics). */
export function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    try {
      fds.set(fd, readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // the fd readdir itself used, already closed again
    }
  }
  return fds;
}

/** Give finalizers and libuv handle closes a chance to run before counting. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

function describeLeak(before: Map<number, string>, after: Map<number, string>): string {
  const added = [...after].filter(([fd, target]) => before.get(fd) !== target);
  const removed = [...before].filter(([fd, target]) => after.get(fd) !== target);
  return [
    ...added.map(([fd, t]) => `  + fd ${fd} -> ${t}`),
    ...removed.map(([fd, t]) => `  - fd ${fd} -> ${t}`),
  ].join('\n');
}

/**
 * Runs `fn` and fails if the process has a different set of open fds afterwards.
 * Compares fd numbers and targets, so a leak that happens to reuse a closed
 * number is still caught when the target differs.
 */
export async function assertNoFdLeak<T>(fn: () => T | Promise<T>): Promise<T> {
  await settle();
  const before = openFds();
  const result = await fn();
  await settle();
  const after = openFds();
  const diff = describeLeak(before, after);
  assert.equal(diff, '', `open fds changed (${before.size} before, ${after.size} after):\n${diff}`);
  return result;
}

/**
 * For node:test files: snapshot the fd set now and return a check to run in `after()`.
 *   const leakCheck = trackFdLeaks(); after(leakCheck);
 */
export function trackFdLeaks(): () => Promise<void> {
  const before = openFds();
  return async () => {
    await settle();
    const after = openFds();
    const diff = describeLeak(before, after);
    assert.equal(diff, '', `test file leaked fds (${before.size} before, ${after.size} after):\n${diff}`);
  };
}
