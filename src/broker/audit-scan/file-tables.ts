// Threads with a file table of their own. A thread that calls unshare(CLONE_FILES) gets a copy of its
// process's file table and from then on opens, receives (SCM_RIGHTS) and closes fds in that copy alone.
// /proc/<pid>/fd lists one table: the main thread's (or, when that thread has exited, the table of the thread
// the process is read through: proc-scan.ts). A device fd kept only in another thread's table was unseen, and
// with it fd-kept and fd-passed (docs/AUDITED-SLICES.md). Mappings need nothing of the kind: threads share
// the mm (a task without CLONE_VM is another process, with its own /proc/<pid>).
//
// /proc names no file table; kcmp(KCMP_FILES) says whether two tasks share one (CONFIG_KCMP, on by default in
// the distributions' kernels; it takes ptrace read access to both tasks, which the broker has as it has for
// maps: CAP_SYS_PTRACE). So each thread is compared with a thread of each table found so far (the first: the
// task whose fd/ was read), and fd/ is read once more per distinct table, through a thread using it.
//
// Cost: the common case, a process of one thread, is one stat(2) of task/ (its link count is 2 + the thread
// count): no readdir, no kcmp. A process of N threads sharing one table costs a readdir of task/ and N - 1
// kcmp calls (2-3.5 µs each here: docs/AUDITED-SLICES.md, "Cost"); reading every thread's fd/ instead cost
// ~45 µs a thread (a readdir and a readlink per fd each). Bounded per process and scan: at most MAX_COMPARES
// kcmp calls, MAX_TABLES more tables read and MAX_TABLE_FDS fds in them (unshare copies a whole table, so
// without that bound one process could show the scan 17 × its RLIMIT_NOFILE fds: ~2 s of the broker's event
// loop at 19,000 fds, measured; a table is listed only as far as the budget goes: TableFdBudget), past which
// the process counts as not fully read in that scan (the scan's `unreadable` and `partial`; the auditor reports
// a lease's process so), so a process of 10,000 threads, tables or fds costs the broker a bounded time however
// it is made. The next scan goes on where the walk stopped (TableCursors): a fixed window hid an fd kept past
// it for good; a moving one reaches every thread within a round of scans (docs/AUDITED-SLICES.md says how
// many). A thread whose table cannot be read (kcmp refused on it, a table over the whole budget) is passed
// over and counted, hiding none of the threads after it.

import { opendirSync, statSync } from 'node:fs';
import { native } from '../../sys/native.js';

/**
 * (Here rather than in proc-scan.ts, which imports this file: both read /proc files of a process.)
 * The broker's own shortage (out of fds or memory) says nothing of the process being read: a scan that counted
 * it unreadable saw no mapping or fd of it, and a slice it still maps would have gone back to the pool. The
 * whole scan fails instead; its callers log it and keep the slices out of the pool (auditor.ts).
 */
const SHORTAGE = new Set(['EMFILE', 'ENFILE', 'ENOMEM']);
export function throwIfShortage(err: unknown): void {
  if (SHORTAGE.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
}

/**
 * kcmp calls per process and scan (one per thread when all share a table): with the walk of task/, a few ms at
 * most for one process. A process of more threads is read in part (and counted so).
 */
export const MAX_COMPARES = 1024;
/** File tables read per process and scan besides the first. */
export const MAX_TABLES = 16;
/** Fds listed in those tables together, per process and scan. */
export const MAX_TABLE_FDS = 4096;

/**
 * What is left of a process's MAX_TABLE_FDS in one scan. A table is listed through it (list()), entry by entry
 * and only up to what is left: a table of 19,000 fds listed whole and then found too big cost the scan all of
 * it, and a window could list 16 such tables each scan (192,096 fds, 190-310 ms a scan) however small the
 * budget. Every entry listed is charged, a table passed over too, and a listing cut short by an error (a thread
 * exiting meanwhile): the fds one scan lists in one process's other tables stay at MAX_TABLE_FDS + 1. Past that
 * the kernel reads ahead what glibc's readdir asks for, 32 KiB at a time (some 1,300 entries of fd/): up to two
 * such buffers, the one the last entry came from and the one that held the entry over the budget (~2,700
 * entries), filled but not looked at.
 */
export class TableFdBudget {
  readonly whole: number;
  constructor(public left = MAX_TABLE_FDS) {
    this.whole = left;
  }

  /** The entries of `dir` (a table's fd/ or fdinfo/), charged; TableFdsSpent once more than is left. */
  list(dir: string): string[] {
    const fresh = this.left === this.whole;
    // Nothing left: the table is the next scan's, unopened (its first entry read here was one past the bound).
    if (this.left === 0 && !fresh) throw new TableFdsSpent(false);
    const names: string[] = [];
    const d = opendirSync(dir, { bufferSize: 256 });
    try {
      for (let e = d.readSync(); e !== null; e = d.readSync()) {
        // The left entries and this one were listed: all of the budget (names.length === left, charged below).
        if (names.length === this.left) throw new TableFdsSpent(fresh);
        names.push(e.name);
      }
    } finally {
      d.closeSync();
      // Here, not after the loop: entries listed before readSync threw (ENOENT: the thread exited) cost as much.
      this.left -= names.length;
    }
    return names;
  }
}

/**
 * Thrown by TableFdBudget.list: the table holds more fds than this scan has left for the process. `never`: more
 * than a whole budget (it was listed with all of it), so no scan reads it.
 */
export class TableFdsSpent extends Error {
  constructor(readonly never: boolean) {
    super("over the fds a scan lists in threads' own file tables");
  }
}

/** What one walk of a process's threads did (forEachOtherFileTable). */
export interface TableWalk {
  /** The walk reached the last thread: the next one starts over at the first (a round ended). */
  done: boolean;
  /** The thread position the next scan's walk starts at: 0 once this one reached the last thread. */
  next: number;
  /** It started over at the first thread: its cursor was past the last (threads exited since). */
  restarted: boolean;
  /**
   * Threads whose table this walk could not read: kcmp refused on that thread (EPERM), its fdinfo named no file,
   * or its table alone holds more than MAX_TABLE_FDS; each is passed over, hiding none of the threads after it.
   * With kcmp missing (ENOSYS) no table is read at all: 1, and done.
   */
  unread: number;
}

/**
 * Calls `read(dir, tid)` once per file table of process `pid` other than that of task `readTid` (whose fd/ the
 * scan read: `pid` itself, or a live thread when the main thread exited), where `dir` is the
 * /proc/<pid>/task/<tid> of a thread using it, for the threads from position `from` of task/ on (the window
 * moves on across scans: TableCursors). `read` lists the table through the process's TableFdBudget and throws
 * when it cannot read it (a thread gone meanwhile, ENOENT, is no loss). The walk stops at a bound and says where
 * the next one goes on; the process was read whole in this scan when `from` was 0, `done` and nothing `unread`.
 * Each walk moves on by one thread at the least: its first thread is compared (with `readTid` alone), and a
 * table is left for the next scan only once another was read in this one.
 */
export function forEachOtherFileTable(
  pid: number,
  readTid: number,
  read: (dir: string, tid: number) => void,
  from = 0,
  limits = { compares: MAX_COMPARES, tables: MAX_TABLES }, // smaller in tests only
): TableWalk {
  const task = `/proc/${pid}/task`;
  const st = statSync(task, { throwIfNoEntry: false });
  if (st === undefined || st.nlink <= 3) return { done: true, next: 0, restarted: from > 0, unread: 0 }; // gone, or one thread
  // At most the threads that can be compared (all but `readTid` and a zombie main thread are), and one more
  // to tell whether the window ends at the last thread. Past the last (threads exited), the walk starts over.
  const max = limits.compares + 2;
  let tids = taskIds(pid, from, max + 1);
  const restarted = tids.length === 0 && from > 0;
  if (restarted) {
    from = 0;
    tids = taskIds(pid, from, max + 1);
  }
  const last = tids.length <= max;
  if (!last) tids.length = max;
  const tables = [readTid]; // a thread of each table read
  let compares = 0;
  let unread = 0;
  const stop = (i: number): TableWalk => ({ done: false, next: from + i, restarted, unread });
  for (const [i, tid] of tids.entries()) {
    // The main thread, when the process was read through another: an exited (zombie) thread, no table.
    if (tid === readTid || (readTid !== pid && tid === pid)) continue;
    let known = false;
    let refused = false;
    for (const other of tables) {
      if (compares++ >= limits.compares) return stop(i);
      try {
        known = native.kcmpFiles(other, tid);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // ESRCH: `tid` (or `other`) exited meanwhile: not known to share; read below, where a gone thread is none.
        if (code === 'ESRCH') continue;
        // No kcmp in this kernel: no table of any process can be told apart, in this scan or another.
        if (code === 'ENOSYS') return { done: true, next: 0, restarted, unread: unread + 1 };
        // EPERM (this thread's credentials differ: no ptrace access to it): this thread's table alone is not
        // known. Passed over and counted; stopping here hid every later table of the process for good.
        refused = true;
        break;
      }
      if (known) break;
    }
    if (refused) {
      unread++;
      continue;
    }
    if (known) continue;
    // The first table and `limits.tables` more read: this thread's is the next scan's first.
    if (tables.length > limits.tables) return stop(i);
    try {
      read(`${task}/${tid}`, tid);
    } catch (err) {
      if (err instanceof TableFdsSpent) {
        // More fds than this scan has left: the next scan reads it first, with the whole budget (a table was read
        // in this one, or the budget would be whole). More than the whole budget: no scan reads it; passed over
        // (its sharers with it), its listing charged, so that the next table ends this scan's window.
        if (!err.never) return stop(i);
        unread++;
      } else {
        throwIfShortage(err);
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // the thread exited: its table with it
        unread++; // unreadable (fdinfo that names no file): its sharers are not tried again
      }
    }
    tables.push(tid);
  }
  return last ? { done: true, next: 0, restarted, unread } : stop(max);
}

/**
 * The thread ids of task/ from position `from`, at most `max`. One lseek to the position (native.taskIdsFrom):
 * listed from its start, task/ cost the threads before the window at each scan (procfs restarts its walk of
 * the thread list at each getdents: 10,000 threads listed whole took ~45 ms here).
 */
function taskIds(pid: number, from: number, max: number): number[] {
  try {
    return native.taskIdsFrom(pid, from, max);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []; // gone since the stat
    throw err;
  }
}

/** Where a process's walk of file tables is, for the auditor (report-once.ts): its round, and whether it ended. */
export interface WalkPlace {
  /** The process's start time: with its pid, the process. */
  start: string | null;
  /** The round this scan's window is in: a round is the scans from the first thread to the last. */
  round: number;
  /** This scan's window reached the last thread: the round is over, every thread looked at in it. */
  ended: boolean;
}

/**
 * Where each multi-threaded process's walk of file tables resumes (forEachOtherFileTable's `next`), across
 * scans: without it every scan looked at the same first MAX_COMPARES threads and MAX_TABLES tables, and a
 * process of more kept a device fd in a later thread's table unseen for good. Keyed by pid and start time (a
 * process given the pid later starts at 0). An entry lives while its process is walked in part: a scan sets
 * (walked()) what the next one starts from, and commit() keeps those alone, so there are never more entries
 * than processes in the last scan. Nothing moves until commit(): a scan run again (the auditor's, when an
 * upgrade's other broker exited during it) reads the same windows, and the walk moves on once per scan.
 */
export class TableCursors {
  #at = new Map<number, { start: string | null; next: number; round: number }>();
  #pending = new Map<number, { start: string | null; next: number; round: number }>();

  /** A scan begins: what an earlier uncommitted scan set is dropped. */
  begin(): void {
    this.#pending.clear();
  }

  /** Where `pid`'s walk starts in this scan. `start`: its start time, read only when an entry is there. */
  from(pid: number, start: () => string | null): { next: number; round: number; start: string | null } {
    const e = this.#at.get(pid);
    if (e !== undefined) {
      const now = start();
      if (e.start === now) return e;
    }
    return { next: 0, round: 0, start: null }; // none, or another process has the pid now
  }

  /**
   * `pid`'s walk from `at` (from()) did `w`, and the process was walked in part: where the next scan goes on,
   * once committed. Returns this scan's place in the process's rounds.
   */
  walked(
    pid: number,
    at: { round: number; start: string | null },
    w: TableWalk,
    start: () => string | null,
  ): WalkPlace {
    const s = at.start ?? start();
    // Started over: the last round ended at the scan before (its window ended on the last thread then).
    const round = w.restarted ? at.round + 1 : at.round;
    this.#pending.set(pid, { start: s, next: w.next, round: w.done ? round + 1 : round });
    return { start: s, round, ended: w.done };
  }

  /** The scan is over: its positions are where the next scan starts; processes it did not walk in part go. */
  commit(): void {
    this.#at = this.#pending;
    this.#pending = new Map();
  }

  get size(): number {
    return this.#at.size;
  }
}
