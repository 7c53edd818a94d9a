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
// loop at 19,000 fds, measured), past which the process counts as not fully read (the scan's `unreadable`
// and `partial`; the auditor reports a lease's process so), so a process of 10,000 threads, tables or fds
// costs the broker a bounded time however it is made.

import { opendirSync, readdirSync, statSync } from 'node:fs';
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
  constructor(public left = MAX_TABLE_FDS) {}
  spend(n: number): void {
    if (n > this.left) throw new TableFdsSpent();
    this.left -= n;
  }
}
/** Thrown by TableFdBudget.spend: the process's other tables hold more fds than one scan reads. */
export class TableFdsSpent extends Error {}

/**
 * Calls `read(dir, tid)` once per file table of process `pid` other than that of task `readTid` (whose fd/ the
 * scan read: `pid` itself, or a live thread when the main thread exited), where `dir` is the
 * /proc/<pid>/task/<tid> of a thread using it. `read` throws when it cannot read that table (a thread gone
 * meanwhile, ENOENT, is no loss). Returns whether every thread was looked at: false past a bound, or when kcmp
 * or `read` failed otherwise (not permitted, no CONFIG_KCMP): the process was not fully read.
 */
export function forEachOtherFileTable(
  pid: number,
  readTid: number,
  read: (dir: string, tid: number) => void,
  limits = { compares: MAX_COMPARES, tables: MAX_TABLES }, // smaller in tests only
): boolean {
  const task = `/proc/${pid}/task`;
  const st = statSync(task, { throwIfNoEntry: false });
  if (st === undefined || st.nlink <= 3) return true; // gone (the reads before said so), or one thread
  // At most the threads that can be compared (all but `readTid` and a zombie main thread are).
  const { tids, truncated } = taskIds(task, st.nlink - 2, limits.compares + 2);
  const tables = [readTid]; // a thread of each table read
  let compares = 0;
  let complete = !truncated;
  for (const tid of tids) {
    // The main thread, when the process was read through another: an exited (zombie) thread, no table.
    if (tid === readTid || (readTid !== pid && tid === pid)) continue;
    let known = false;
    for (const other of tables) {
      if (compares++ >= limits.compares) return false;
      try {
        known = native.kcmpFiles(other, tid);
      } catch (err) {
        // ESRCH: `tid` (or `other`) exited meanwhile: not known to share; read below, where a gone thread is none.
        if ((err as NodeJS.ErrnoException).code === 'ESRCH') continue;
        return false; // EPERM, ENOSYS: this process's tables cannot be told apart
      }
      if (known) break;
    }
    if (known) continue;
    if (tables.length > limits.tables) return false; // the first table and `limits.tables` more read
    try {
      read(`${task}/${tid}`, tid);
    } catch (err) {
      if (err instanceof TableFdsSpent) return false;
      throwIfShortage(err);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // the thread exited: its table with it
      complete = false; // unreadable (fdinfo that names no file): its sharers are not tried again
    }
    tables.push(tid);
  }
  return complete;
}

/**
 * The thread ids in task/ (`count` of them, as its link count said), at most `max`. Listed whole when that is
 * all there is to look at; read entry by entry past it: procfs restarts its walk of the thread list at each
 * getdents, so listing task/ whole grows with the square of the thread count (10,000 threads: ~45 ms here, the
 * first 4096 of them ~9 ms), and the entries past `max` would not be looked at anyway.
 */
function taskIds(task: string, count: number, max: number): { tids: number[]; truncated: boolean } {
  // Listed whole, 3 times cheaper than through a Dir for a few entries. Threads made since the stat are listed
  // too (a race of microseconds; the kcmp bound still holds the walk).
  if (count <= max) return { tids: readdirSync(task).map(Number), truncated: false };
  const tids: number[] = [];
  const dir = opendirSync(task, { bufferSize: 256 });
  try {
    for (let e = dir.readSync(); e !== null; e = dir.readSync()) {
      if (tids.length === max) return { tids, truncated: true };
      tids.push(Number(e.name));
    }
  } finally {
    dir.closeSync();
  }
  return { tids, truncated: false };
}
