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
// loop at 19,000 fds, measured), past which the process counts as not fully read in that scan (the scan's
// `unreadable` and `partial`; the auditor reports a lease's process so), so a process of 10,000 threads,
// tables or fds costs the broker a bounded time however it is made. The next scan goes on where the walk
// stopped (TableCursors): a fixed window hid an fd kept past it for good; a moving one reaches every thread
// within a round of scans (docs/AUDITED-SLICES.md says how many).

import { statSync } from 'node:fs';
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

/** What is left of a process's MAX_TABLE_FDS in one scan; spend() throws TableFdsSpent past it. */
export class TableFdBudget {
  readonly whole: number;
  constructor(public left = MAX_TABLE_FDS) {
    this.whole = left;
  }
  spend(n: number): void {
    if (n > this.left) throw new TableFdsSpent(n > this.whole);
    this.left -= n;
  }
}
/**
 * Thrown by TableFdBudget.spend: the process's other tables hold more fds than one scan reads. `never`: this
 * table alone does, so no scan reads it.
 */
export class TableFdsSpent extends Error {
  constructor(readonly never: boolean) {
    super("over the fds a scan reads in threads' own file tables");
  }
}

/** What one walk of a process's threads did (forEachOtherFileTable). */
export interface TableWalk {
  /** The walk reached the last thread (from the position it started at). */
  done: boolean;
  /** The thread position the next scan's walk starts at: 0 once this one reached the last thread. */
  next: number;
  /** A table was read by no scan: kcmp refused, its fdinfo named no file, or it alone holds over MAX_TABLE_FDS. */
  unread: boolean;
}

/**
 * Calls `read(dir, tid)` once per file table of process `pid` other than that of task `readTid` (whose fd/ the
 * scan read: `pid` itself, or a live thread when the main thread exited), where `dir` is the
 * /proc/<pid>/task/<tid> of a thread using it, for the threads from position `from` of task/ on (the window
 * moves on across scans: TableCursors). `read` throws when it cannot read that table (a thread gone meanwhile,
 * ENOENT, is no loss). The walk stops at a bound, and says where the next one goes on; the process was read
 * whole in this scan when `from` was 0, `done` and not `unread`.
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
  if (st === undefined || st.nlink <= 3) return { done: true, next: 0, unread: false }; // gone, or one thread
  // At most the threads that can be compared (all but `readTid` and a zombie main thread are). Past the last
  // thread (threads exited since the last scan), the walk starts over.
  const max = limits.compares + 2;
  let tids = taskIds(pid, from, max);
  if (tids.length === 0 && from > 0) {
    from = 0;
    tids = taskIds(pid, from, max);
  }
  const tables = [readTid]; // a thread of each table read
  let compares = 0;
  let unread = false;
  for (const [i, tid] of tids.entries()) {
    // The main thread, when the process was read through another: an exited (zombie) thread, no table.
    if (tid === readTid || (readTid !== pid && tid === pid)) continue;
    let known = false;
    for (const other of tables) {
      // Each scan compares its window's first thread at least (tables holds readTid's alone then): the window
      // moves on by one thread a scan at the least, however the threads' tables are laid out.
      if (compares++ >= limits.compares) return { done: false, next: from + i, unread };
      try {
        known = native.kcmpFiles(other, tid);
      } catch (err) {
        // ESRCH: `tid` (or `other`) exited meanwhile: not known to share; read below, where a gone thread is none.
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') continue;
        // EPERM, ENOSYS: this process's tables cannot be told apart, in this scan or another: no window to move.
        return { done: false, next: 0, unread: true };
      }
      if (known) break;
    }
    if (known) continue;
    // The first table and `limits.tables` more read: this thread's is the next scan's first.
    if (tables.length > limits.tables) return { done: false, next: from + i, unread };
    try {
      read(`${task}/${tid}`, tid);
    } catch (err) {
      if (err instanceof TableFdsSpent) {
        // More fds than this scan has left: the next scan reads it first, with the whole budget. More than the
        // whole budget: no scan reads it; passed over, so that it hides none of the tables after it.
        if (!err.never) return { done: false, next: from + i, unread };
        unread = true;
      } else {
        throwIfShortage(err);
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // the thread exited: its table with it
        unread = true; // unreadable (fdinfo that names no file): its sharers are not tried again
      }
    }
    tables.push(tid);
  }
  // A full window may end exactly at the last thread: the next scan then finds none past it and starts over.
  const full = tids.length === max;
  return { done: !full, next: full ? from + max : 0, unread };
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

/**
 * Where each multi-threaded process's walk of file tables resumes (forEachOtherFileTable's `next`), across
 * scans: without it every scan looked at the same first MAX_COMPARES threads and MAX_TABLES tables, and a
 * process of more kept a device fd in a later thread's table unseen for good. Keyed by pid and start time (a
 * process given the pid later starts at 0); an entry lives while its process is walked past a bound, and goes
 * at the end of the first scan that did not leave it there (the process gone, or read to its last thread), so
 * there are never more entries than processes in the last scan.
 */
export class TableCursors {
  readonly #at = new Map<number, { start: string | null; next: number; scan: number }>();
  #scan = 0;

  /** A scan begins: entries not set during it are dropped at its end (endScan). */
  beginScan(): void {
    this.#scan++;
  }

  /** Where `pid`'s walk starts in this scan. `start`: its start time, read only when an entry is there. */
  from(pid: number, start: () => string | null): number {
    const e = this.#at.get(pid);
    if (e === undefined) return 0;
    if (e.start === start()) return e.next;
    this.#at.delete(pid); // another process has the pid now
    return 0;
  }

  /** Where `pid`'s walk goes on at the next scan (0: from its first thread, so no entry). */
  set(pid: number, next: number, start: () => string | null): void {
    if (next === 0) this.#at.delete(pid);
    else this.#at.set(pid, { start: this.#at.get(pid)?.start ?? start(), next, scan: this.#scan });
  }

  endScan(): void {
    for (const [pid, e] of this.#at) if (e.scan !== this.#scan) this.#at.delete(pid);
  }

  get size(): number {
    return this.#at.size;
  }
}
