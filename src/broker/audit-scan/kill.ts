// The audit's kills (auditor.ts): a violator's, and a revoke's deadline's of every process still mapping the
// lease's slices. Through a pidfd, and only of the process recorded: a pid another process has taken since is
// left alone.

import { PidFd } from '../../sys/pidfd.js';
import type { AuditorHost, DirectAuditConfig } from './audit-types.js';
import type { MappingFound } from './proc-scan.js';
import { processFacts, startTimeOf } from './process-facts.js';

/**
 * SIGKILL `pid`, recorded as `audit-kill`. `start`: the process's start time when it was recorded (null: it was
 * gone then); undefined: seen just now. 'gone': not killed, nothing to kill (exited, or another process has the
 * pid now); 'failed': the kill itself failed (pidfd_open at EMFILE), logged: the process may live on.
 */
export function killRecorded(
  host: AuditorHost,
  pid: number,
  why: string,
  start?: string | null,
): 'killed' | 'gone' | 'failed' {
  if (start === null) return 'gone';
  let pfd: PidFd | null = null;
  try {
    pfd = PidFd.open(pid);
    // Checked with the pidfd held: it names the process that had the pid then, which is the one recorded only
    // if the start time (read after) is still the same.
    if (start !== undefined && startTimeOf(pid) !== start) return 'gone';
    pfd.sendSignal('SIGKILL');
    host.audit.write({ event: 'audit-kill', pid, reason: why });
    return 'killed';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return 'gone';
    host.log(`audit: could not kill pid ${pid} (${why}): ${(err as Error).message}`);
    return 'failed';
  } finally {
    pfd?.close();
  }
}

/**
 * A revoke's deadline, for lease `lease`: every process of `maps` (one scan's) mapping its `ranges`, and every
 * violator recorded of it, is killed (deadlineAction 'report': recorded as `audit-still-mapped` instead).
 * False when a kill failed (the process may live on): the caller tries again at its next scan.
 */
export function killMappersOf(
  host: AuditorHost,
  config: DirectAuditConfig,
  lease: { id: string; ranges: { start: bigint; end: bigint }[]; violators: Map<number, string | null> },
  maps: readonly MappingFound[],
): boolean {
  // A violator recorded earlier is that process only while its start time is the same: it may have exited
  // since and its pid named another process (which was SIGKILLed for it). A mapper was seen just now.
  const pids = new Map<number, string | null | undefined>(lease.violators);
  for (const m of maps) {
    const end = m.offset + (m.end - m.start);
    if (lease.ranges.some((r) => m.offset < r.end && end > r.start)) pids.set(m.pid, undefined);
  }
  let done = true;
  for (const [pid, start] of pids) {
    if (config.deadlineAction === 'kill') {
      if (killRecorded(host, pid, `lease ${lease.id} revoked: still mapping its slice`, start) === 'failed')
        done = false;
    } else if (start === undefined || (start !== null && startTimeOf(pid) === start))
      host.audit.write({ event: 'audit-still-mapped', lease: lease.id, pid, ...processFacts(pid) });
  }
  return done;
}
