// Fd-leak accounting for tests: the project standard is that every test file
// leaves the process with the same set of open descriptors it started with.
import assert from 'node:assert/strict';
import { openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { Fd } from '../../src/sys/fd.js';
import { native } from '../../src/sys/native.js';

/** Number of open descriptors of this process (the /proc/self/fd listing itself excluded). */
export function openFdCount(): number {
  return openFds().size;
}

/**
 * Files the runtime itself opens for a moment, from any of its threads, and closes again: glibc's malloc reads
 * /proc/sys/vm/overcommit_memory once per process, the first time a thread's arena shrinks (a V8 or libuv
 * thread, at any moment). Seen by a snapshot, such an fd is not the code under test's.
 */
const RUNTIME_TRANSIENT = new Set(['/proc/sys/vm/overcommit_memory']);

/** Open descriptors of this process as number -> link target (for leak diagnostics). */
export function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    try {
      const target = readlinkSync(`/proc/self/fd/${name}`);
      if (!RUNTIME_TRANSIENT.has(target)) fds.set(fd, target);
    } catch {
      // the fd readdir itself used, already closed again
    }
  }
  return fds;
}

/** Open descriptors of this process on memfds whose name starts with `name`. */
export function memfdFdCount(name: string): number {
  return [...openFds().values()].filter((t) => t.startsWith(`/memfd:${name}`)).length;
}

/** Give finalizers and libuv handle closes a chance to run before counting. */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** The fds added to and removed from `before`, one per line (for an assertion's message). */
export function describeLeak(before: Map<number, string>, after: Map<number, string>): string {
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

/** A blocking eventfd whose counter stands one below its limit: a write of 1 to it never returns. */
export function saturatedBlockingEventfd(): Fd {
  const fd = new Fd(native.eventfd(0, 0));
  native.eventfdWrite(fd.fd, 0xffff_ffff_ffff_fffen);
  return fd;
}

/**
 * The size of this process's fd table (FDSize in /proc/self/status): the kernel grows it to fit the highest
 * descriptor ever installed and never shrinks it, so it tells whether fds were installed even after they were
 * closed again.
 */
export function fdTableSize(): number {
  const m = /^FDSize:\s*(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error('no FDSize in /proc/self/status');
  return Number(m[1]);
}

/**
 * Take the lowest free descriptor numbers (/dev/null, read-only) until exactly `free` are left below the fd
 * table's size (growing the table first if fewer are): installing more than `free` fds at once then grows it
 * (fdTableSize), whoever closes them afterwards. Returns the fillers, to be closed by the caller.
 */
export function fillFdTable(free: number): Fd[] {
  const fillers: Fd[] = [];
  const fill = () => fillers.push(new Fd(openSync('/dev/null', 'r')));
  try {
    for (;;) {
      const size = fdTableSize();
      let left = size - [...openFds().keys()].filter((fd) => fd < size).length;
      if (left < free) {
        fill(); // on to the end of the table, until it grows
        continue;
      }
      for (; left > free; left--) fill();
      return fillers;
    }
  } catch (err) {
    for (const f of fillers) f.close();
    throw err;
  }
}
