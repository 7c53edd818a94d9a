// Another process's CPU time and open descriptors, from /proc: behaviour
// checks such as "not spinning" (CPU over a few seconds stays low) and
// "descriptors freed" (its fd count back to where it was).
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/** /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second. */
export const TICKS_PER_SECOND = 100;

/** User + system CPU time of `pid`, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** Whether `pid` is stopped (state T: SIGSTOP, or a process that stopped itself); false once it is gone. */
export function stopped(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'T';
  } catch {
    return false;
  }
}

/** Whether a process has `pid` (signal 0: a zombie still has it). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Open descriptors of `pid`. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** CPU seconds `pid` uses during the next `ms` milliseconds. */
export async function cpuDuring(pid: number, ms: number): Promise<number> {
  const before = cpuSeconds(pid);
  await new Promise((r) => setTimeout(r, ms));
  return cpuSeconds(pid) - before;
}

/** Resident set size of `pid`, in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const kb = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB$/m)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(kb) * 1024;
}

/** Mappings of `pid` whose path contains `what` (e.g. 'memfd:'), from /proc/<pid>/maps. */
export function mappingCount(pid: number, what: string): number {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.includes(what)).length;
}

/** Descriptors of `pid` as "fd -> target" lines (for leak messages). */
export function fdTargets(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(fd, readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/** What changed between two fdTargets() listings. */
export function fdDiff(before: Map<string, string>, after: Map<string, string>): string {
  const added = [...after].filter(([fd, t]) => before.get(fd) !== t).map(([fd, t]) => `+${fd}->${t}`);
  const removed = [...before].filter(([fd, t]) => after.get(fd) !== t).map(([fd, t]) => `-${fd}->${t}`);
  return [...added, ...removed].join(' ');
}

/**
 * What `pid` has had of child processes: the pids whose parent it is now (from /proc/<n>/stat: no
 * /proc/<pid>/task/<tid>/children on a kernel without CONFIG_PROC_CHILDREN), and the page faults of the children
 * it has waited for (cminflt + cmajflt). A child started and reaped in between (a spawnSync) leaves no pid but
 * adds its faults, which no exec'd process has none of.
 */
export function childTrace(pid: number): { children: number[]; waitedFaults: number } {
  const children: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // ppid is field 4: the second after the parenthesised command name.
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // cminflt and cmajflt are fields 11 and 13.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { children: children.sort((a, b) => a - b), waitedFaults: Number(fields[8]) + Number(fields[10]) };
}
