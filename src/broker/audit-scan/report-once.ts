// What the audit has recorded already (auditor.ts): each violation and each `audit-incomplete` is recorded once
// while it lasts, not at every scan that sees it again. Keyed by pid with its start time, what was found and the
// lease: a process given the pid later (pid_max wraps) is another key, recorded anew.

import { startTimeOf } from './process-facts.js';

export class ReportOnce {
  /**
   * Keys recorded (pid@start:what:lease), while each lasts: dropped when a scan no longer sees it (endScan), so
   * that the same finding made again later is recorded again.
   */
  readonly #reported = new Set<string>();
  readonly #seen = new Set<string>(); // those the scan in progress saw

  beginScan(): void {
    this.#seen.clear();
  }

  /**
   * Marks what this scan saw of `pid` (`what`, for `lease`); its start time, or false when an earlier scan had
   * seen it already (recorded then).
   */
  firstSeen(pid: number, what: string, lease: string | null): string | null | false {
    const start = startTimeOf(pid);
    const key = `${pid}@${start}:${what}:${lease}`;
    this.#seen.add(key);
    if (this.#reported.has(key)) return false;
    this.#reported.add(key);
    return start;
  }

  /**
   * The scan is over: what it did not see is forgotten, but for an fd found in a thread's own table of a
   * process it read in part (`partial`): the walk's window moved on (file-tables.ts), and the fd, unseen by
   * this window, would be recorded anew at each round.
   */
  endScan(partial: readonly number[]): void {
    const inPart = new Set(partial);
    for (const k of this.#reported)
      if (!this.#seen.has(k) && !heldInPart(k, inPart)) this.#reported.delete(k);
  }

  /** A lease released: what was recorded for it goes. */
  forgetLease(id: string): void {
    for (const k of [...this.#reported]) if (k.endsWith(`:${id}`)) this.#reported.delete(k);
  }

  /** For an upgrade's handover (the next broker adopts them: nothing recorded twice across it). */
  keys(): string[] {
    return [...this.#reported];
  }

  adopt(keys: readonly string[]): void {
    for (const k of keys) this.#reported.add(k);
  }
}

/** Whether key `k` is of an fd found in a process of `partial`. */
function heldInPart(k: string, partial: ReadonlySet<number>): boolean {
  return (
    (k.includes(':fd-kept:') || k.includes(':fd-passed:')) && partial.has(Number(k.slice(0, k.indexOf('@'))))
  );
}
