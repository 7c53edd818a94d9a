// What the audit reads of one process besides its fds and mappings (proc-scan.ts): its start time (with the pid,
// what names one process), whether it still runs, its parent and ancestry, and the executable an audit record
// names. From /proc/<pid>/stat and exe.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** What the audit record names: the executable and the parent (a child the fd was passed to, say). */
export function processFacts(pid: number): { exe: string | null; ppid: number | null } {
  let exe: string | null = null;
  let ppid: number | null = null;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    // gone, a kernel thread, or a main thread gone (see the top): a live thread's
    for (const tid of safeReaddir(`/proc/${pid}/task`)) {
      try {
        exe = readlinkSync(`/proc/${pid}/task/${tid}/exe`);
        break;
      } catch {
        // not this one
      }
    }
  }
  ppid = parentOf(pid);
  return { exe, ppid };
}

/**
 * /proc/<pid>/stat's fields after the parenthesised comm (which may hold spaces and parentheses): [0] is field 3
 * (state), [1] field 4 (ppid), [17] field 20 (num_threads), [19] field 22 (starttime). Null when there is none.
 */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** The parent pid from /proc/<pid>/stat, or null. */
export function parentOf(pid: number): number | null {
  const ppid = Number(statFields(pid)?.[1]);
  return Number.isInteger(ppid) ? ppid : null;
}

/**
 * The start time of the process `pid` names now (/proc/<pid>/stat field 22, in clock ticks since boot), or null
 * when there is none. With the pid it names one process: a pid alone names whichever process has it now.
 */
export function startTimeOf(pid: number): string | null {
  return statFields(pid)?.[19] ?? null;
}

/**
 * Whether `pid` is a process that has not exited (gone, a zombie or dead: false). A zombie main thread with
 * other threads still counted (num_threads, field 20, counts the zombie leader too) is a running process.
 */
export function isRunning(pid: number): boolean {
  const rest = statFields(pid);
  if (rest === null) return false;
  const state = rest[0];
  if (state !== 'Z' && state !== 'X' && state !== 'x') return true;
  return Number(rest[17]) > 1;
}

/** Whether `pid` is `ancestor` or descends from it (walks at most 64 parents). */
export function descendsFrom(pid: number, ancestor: number): boolean {
  let p: number | null = pid;
  for (let i = 0; i < 64 && p !== null && p > 0; i++) {
    if (p === ancestor) return true;
    p = parentOf(p);
  }
  return false;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
