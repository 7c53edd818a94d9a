// The audit tests' mapper process (test/fixtures/audit/mapper.ts), started and ended in one place. It maps a
// page of a file standing in for the device and, with --fork, forks a child that keeps the mapping; the child is
// re-parented to init once the mapper dies, so only a pidfd names it for good (its pid is free for any other
// process once init reaps it). Both pidfds are taken as the mapper reports, while both wait to be killed.
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { PidFd } from '../../src/sys/pidfd.js';
import { pidfdOf, signal } from './pidfd.js';

const MAPPER = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/audit/mapper.js');

export interface Mapper {
  /** The mapper's pid, and its forked child's (null without --fork). */
  readonly pid: number;
  readonly child: number | null;
  readonly proc: ChildProcess;
  readonly pidfd: PidFd;
  readonly childPidfd: PidFd | null;
  /** The mapper exited. */
  readonly exited: Promise<void>;
  /** The mapper exited and its stdout closed (which a forked child holds too, until it is gone). */
  readonly closed: Promise<void>;
  /** SIGKILLs the mapper through its pidfd; nothing if it is gone already. */
  kill(): void;
  /** SIGKILLs the forked child through its pidfd; nothing if it is gone already (or there is none). */
  killChild(): void;
  /** Kills both, waits for `closed`, closes the pidfds. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Mappers started and not closed yet: closeMappers() ends them (a file's after(), before its leak check). */
const open = new Set<Mapper>();

/**
 * Starts `node mapper.js FILE OFFSET LENGTH [flags]` (--keep-fd, --fork); resolves once it has mapped and
 * reported, rejects if it exits first or says nothing within 30 s.
 */
export async function startMapper(
  file: string,
  offset: bigint | number,
  length: bigint | number,
  flags: string[] = [],
): Promise<Mapper> {
  const proc = spawn(process.execPath, [MAPPER, file, String(offset), String(length), ...flags], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const closed = new Promise<void>((r) => proc.once('close', () => r()));
  let line: string;
  try {
    line = await new Promise<string>((resolve, reject) => {
      const fail = (err: Error) => {
        clearTimeout(t);
        reject(err); // nothing once resolved
      };
      const t = setTimeout(() => fail(new Error('the mapper did not report within 30 s')), 30_000);
      proc.once('exit', (code, sig) =>
        fail(new Error(`the mapper exited (${code ?? sig}) before it reported`)),
      );
      createInterface({ input: proc.stdout! }).once('line', (l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
  } catch (err) {
    proc.kill('SIGKILL');
    await closed;
    throw err;
  }
  const { pid, child } = JSON.parse(line) as { pid: number; child: number | null };
  // Both wait for a signal once reported: alive here, so each pidfd names that process for good.
  const pidfd = pidfdOf(pid, 'the mapper');
  let childPidfd: PidFd | null = null;
  try {
    if (child !== null) childPidfd = pidfdOf(child, "the mapper's forked child");
  } catch (err) {
    signal(pidfd, 'SIGKILL');
    pidfd.close();
    await closed;
    throw err;
  }
  let closing: Promise<void> | null = null;
  const m: Mapper = {
    pid,
    child,
    proc,
    pidfd,
    childPidfd,
    exited,
    closed,
    kill: () => {
      if (!pidfd.closed) signal(pidfd, 'SIGKILL');
    },
    killChild: () => {
      if (childPidfd && !childPidfd.closed) signal(childPidfd, 'SIGKILL');
    },
    close: () => {
      closing ??= (async () => {
        m.kill();
        m.killChild();
        await closed;
        pidfd.close();
        childPidfd?.close();
        open.delete(m);
      })();
      return closing;
    },
    [Symbol.asyncDispose]: () => m.close(),
  };
  open.add(m);
  return m;
}

/** Closes every mapper this process started and has not closed. */
export async function closeMappers(): Promise<void> {
  await Promise.all([...open].map((m) => m.close()));
}
