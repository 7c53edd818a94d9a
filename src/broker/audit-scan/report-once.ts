// What the audit has recorded already (auditor.ts): each violation and each `audit-incomplete` is recorded once
// while it lasts, not at every scan that sees it again. Keyed by pid with its start time, what was found and the
// lease: a process given the pid later (pid_max wraps) is another key, recorded anew.
//
// When a finding stops lasting: a key the scan did not see is forgotten at its end (so the same finding made
// again later is recorded again), but for an fd found in a thread's own table of a process the scan read in
// part (and for its `incomplete-unread`: a table no scan reads, in some windows only). Its walk of file tables
// moves on a window a scan (file-tables.ts), so one scan not seeing the fd says
// nothing; forgotten at every such scan, it was recorded anew at every round. Such a key is kept until a whole
// round of the walk (the scans from the first thread to the last) has passed without seeing it: at the end of
// the first round that began after the one it was last seen in. Kept for ever instead (as first written), a
// finding that went away and came back in a process always read in part was never recorded again.
//
// And `audit-incomplete` (`incomplete`: the process is read in part) outlasts one scan that reads the process
// whole: it is forgotten at the second such scan in a row. A process whose thread count moves about the bound
// (some 1,026 threads) is read whole and in part by turns, and forgotten at each whole read its key was
// recorded anew about every other scan.

import type { WalkPlace } from './file-tables.js';
import { startTimeOf } from './process-facts.js';

/** The round of a key last seen while its process was read whole (or adopted from an upgrade): none. */
const NO_ROUND = -1;

export class ReportOnce {
  /** Keys recorded (pid@start:what:lease) → the round of the process's walk in which each was last seen. */
  readonly #reported = new Map<string, number>();
  readonly #seen = new Set<string>(); // those the scan in progress saw
  /** `incomplete` keys the last scan did not see: the next scan not seeing them forgets them. */
  readonly #missed = new Set<string>();
  /** The scan in progress's processes read in part: where each one's walk is (proc-scan.ts: windows). */
  #windows: ReadonlyMap<number, WalkPlace> = new Map();

  beginScan(windows: ReadonlyMap<number, WalkPlace>): void {
    this.#seen.clear();
    this.#windows = windows;
  }

  /**
   * Marks what this scan saw of `pid` (`what`, for `lease`); its start time, or false when an earlier scan had
   * seen it already (recorded then).
   */
  firstSeen(pid: number, what: string, lease: string | null): string | null | false {
    const start = startTimeOf(pid);
    const key = `${pid}@${start}:${what}:${lease}`;
    this.#seen.add(key);
    const w = this.#windows.get(pid);
    const had = this.#reported.has(key);
    this.#reported.set(key, w !== undefined && w.start === start ? w.round : NO_ROUND);
    return had ? false : start;
  }

  /** The scan is over: what it did not see is forgotten, but as the top says. */
  endScan(): void {
    for (const [k, round] of this.#reported) {
      if (this.#seen.has(k) || this.#keptInPart(k, round)) this.#missed.delete(k);
      // One scan without it reading the process whole: kept (as the top says); the second forgets it.
      else if (k.includes(':incomplete:') && !this.#missed.has(k)) this.#missed.add(k);
      else {
        this.#reported.delete(k);
        this.#missed.delete(k);
      }
    }
  }

  /**
   * Whether key `k` (last seen in `round`) is of an fd, or an unread table, in a process read in part whose round
   * since is not over.
   */
  #keptInPart(k: string, round: number): boolean {
    // fd/ and maps are read whole; an unread table is in some windows only (auditor.ts: #incomplete).
    if (!k.includes(':fd-kept:') && !k.includes(':fd-passed:') && !k.includes(':incomplete-unread:'))
      return false;
    const at = k.indexOf('@');
    const w = this.#windows.get(Number(k.slice(0, at)));
    if (w === undefined || !k.startsWith(`${k.slice(0, at)}@${w.start}:`)) return false; // read whole, or gone
    // The last round over: this one if its window reached the last thread, else the one before. That one ended
    // at the scan before, by reaching the last thread, or by a restart (threads exited below the cursor: the walk
    // started over at the first thread in this scan, a round on). Counted by `ended` alone, a process whose every
    // round ended by a restart kept its fd keys for ever.
    const over = w.ended ? w.round : w.round - 1;
    return over <= round;
  }

  /** A lease released: what was recorded for it goes. */
  forgetLease(id: string): void {
    for (const k of [...this.#reported.keys()])
      if (k.endsWith(`:${id}`)) {
        this.#reported.delete(k);
        this.#missed.delete(k);
      }
  }

  /** For an upgrade's handover (the next broker adopts them: nothing recorded twice across it). */
  keys(): string[] {
    return [...this.#reported.keys()];
  }

  /** The next broker's walks start over (their cursors are not carried): a round of theirs decides. */
  adopt(keys: readonly string[]): void {
    for (const k of keys) this.#reported.set(k, NO_ROUND);
  }
}
