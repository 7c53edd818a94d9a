// One pass over /proc: which processes hold an fd of a file, and which map
// it (and which range of it). This is how the broker checks the assumptions
// behind an audited slice (docs/AUDITED-SLICES.md): the client closed the
// device fd it was handed, passed it to nobody, and maps only its slice.
//
// A file is named by what stat(2) says of it (st_dev, st_ino, st_rdev) and,
// for fds, by the target text of its /proc/<pid>/fd link, compared first:
// readlink is one cheap syscall and almost every fd differs in its text, so
// stat runs only on the few candidates. A VFIO device fd of the legacy group
// path is an anonymous inode (`anon_inode:[vfio-device]`) shared with every
// other device's: `syspath` (fdinfo's `vfio-device-syspath`, kernels since
// 6.10) tells devices apart where the kernel says it; mappings carry no such
// line, so two devices on the group path are told apart by their region
// offsets only (documented as a limit).
//
// Bounded: one readdir of /proc, per process one readdir of fd/ plus one
// readlink per fd, one read of maps and one stat of task/ (a thread with a
// file table of its own is read too, within bounds: file-tables.ts).
// Processes that vanish mid-scan or
// cannot be read (not root) are counted, never fatal. A maps file is read
// through one fixed buffer and only each line's head (range, perms, offset,
// dev, inode) is looked at: any process can make its maps file huge (65530
// mappings of a file with a path thousands of bytes long: hundreds of MB), and
// read whole it cost the broker that much memory at each scan (past V8's
// longest string, ~512 MB, the process went unread: its mappings unseen).
//
// /proc/<pid> is the process's main thread: once that thread has exited
// (pthread_exit in main) it is a zombie with no mm and no fd table, and its
// maps and fd/ read empty while the other threads run on with both. Such a
// process is read through one of its live threads (/proc/<pid>/task/<tid>);
// read only through /proc/<pid>, it held the device fd and mapped its slice
// unseen (the slice went back to the pool while still mapped).

import { closeSync, openSync, readdirSync, readlinkSync, readSync, statSync } from 'node:fs';
import { readHead } from '../../sys/read-head.js';
import {
  forEachOtherFileTable,
  TableCursors,
  TableFdBudget,
  throwIfShortage,
  type WalkPlace,
} from './file-tables.js';
import { startTimeOf } from './process-facts.js';

/** What identifies the audited file. */
export interface FileIdentity {
  /** The /proc/<pid>/fd link text of a description of it (e.g. '/dev/vfio/devices/vfio0'). */
  link: string;
  dev: bigint;
  ino: bigint;
  rdev: bigint;
  /** fdinfo's `vfio-device-syspath`, when the kernel prints one. */
  syspath: string | null;
  /** fdinfo's `mnt_id` (with `ino`, what names the file where fd/ cannot be read: scanFdinfo). */
  mntId: number | null;
}

export interface FdHolding {
  pid: number;
  fd: number;
  /** The thread whose own file table holds it (unshare(CLONE_FILES): file-tables.ts); absent: the process's. */
  tid?: number;
}

export interface MappingFound {
  pid: number;
  start: bigint;
  end: bigint;
  /** File offset of `start` (for a VFIO device fd: region offset + offset in the region). */
  offset: bigint;
  perms: string;
}

export interface ScanResult {
  fds: FdHolding[];
  maps: MappingFound[];
  /** Processes looked at, and those that could not be read (gone, or not permitted). */
  processes: number;
  unreadable: number;
  /**
   * Of the unreadable, the processes read but for some of their threads' own file tables (file-tables.ts: past
   * its bounds, or kcmp refused): an fd kept there is not seen in this scan. The auditor reports a lease's
   * process so. Past the bounds, the next scans read the rest in turn (TableCursors); not so `unreadTables`.
   */
  partial: number[];
  /** Of `partial`, those with a table no scan reads (kcmp refused, fdinfo naming no file, over MAX_TABLE_FDS). */
  unreadTables: number[];
  /** Each of `partial`'s place in the rounds of its walk (the auditor forgets fd findings by it: report-once.ts). */
  windows: Map<number, WalkPlace>;
  /** Wall time of the scan. */
  us: number;
}

/** The identity of an open fd of this process (the broker's own description of the device). */
export function identityOfFd(fd: number): FileIdentity {
  const link = readlinkSync(`/proc/self/fd/${fd}`);
  const st = statSync(`/proc/self/fd/${fd}`, { bigint: true });
  const info = readFdinfo(`/proc/self/fdinfo/${fd}`); // one read for both fields
  const mnt = fdinfoField(info, 'mnt_id');
  return {
    link,
    dev: st.dev,
    ino: st.ino,
    rdev: st.rdev,
    syspath: fdinfoField(info, 'vfio-device-syspath'),
    mntId: mnt === null ? null : Number(mnt),
  };
}

/** The maps file's "maj:min" of a stat dev number (Linux's new_encode_dev split). */
export function mapsDev(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const hex = (v: bigint, n: number) => v.toString(16).padStart(n, '0');
  return `${hex(major, 2)}:${hex(minor, 2)}`;
}

/**
 * Scan every process but `exclude` for fds and mappings of `target`. `cursors`: where the walks of threads' own
 * file tables go on (file-tables.ts); this scan's walks start from its committed positions and set the next
 * ones, which take effect at cursors.commit() (the caller's, once per scan it keeps). Without, each process's
 * walk starts at its first thread.
 */
export function scanProc(
  target: FileIdentity,
  exclude: ReadonlySet<number> = new Set(),
  cursors = new TableCursors(),
): ScanResult {
  const t0 = process.hrtime.bigint();
  const out: ScanResult = {
    fds: [],
    maps: [],
    processes: 0,
    unreadable: 0,
    partial: [],
    unreadTables: [],
    windows: new Map(),
    us: 0,
  };
  const dev = mapsDev(target.dev);
  const ino = target.ino.toString();
  cursors.begin();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid <= 0 || exclude.has(pid)) continue;
    out.processes++;
    try {
      const tid = scanMaps(pid, dev, ino, out.maps);
      const dir = tid === null || tid === pid ? `/proc/${pid}` : `/proc/${pid}/task/${tid}`;
      scanFds(pid, dir, target, out.fds);
      // A thread's own file table (unshare(CLONE_FILES)): fd/ above listed one table only (file-tables.ts). No mm:
      // a kernel thread (most of /proc's processes) or a zombie, whose threads keep no fd of their own.
      if (tid === null) continue;
      const budget = new TableFdBudget();
      const start = () => startTimeOf(pid);
      const at = cursors.from(pid, start);
      const w = forEachOtherFileTable(
        pid,
        tid,
        (d, t) => scanFds(pid, d, target, out.fds, t, budget),
        at.next,
      );
      if ((at.next === 0 || w.restarted) && w.done && w.unread === 0) continue; // read whole: no cursor kept
      out.unreadable++;
      out.partial.push(pid);
      out.windows.set(pid, cursors.walked(pid, at, w, start));
      if (w.unread > 0) out.unreadTables.push(pid);
    } catch (err) {
      throwIfShortage(err);
      out.unreadable++;
    }
  }
  out.us = Number(process.hrtime.bigint() - t0) / 1000;
  return out;
}

/**
 * Adds the process's mappings of the file (dev, ino as maps prints them) to `into`; returns the task they were
 * read from, whose fds are read too: `pid`, or when its maps is empty (a kernel thread, a zombie, or a main
 * thread gone: see the top) a live thread; null when no task has an mm (a kernel thread, a zombie).
 */
function scanMaps(pid: number, dev: string, ino: string, into: MappingFound[]): number | null {
  const dir = `/proc/${pid}`;
  if (grepMaps(pid, `${dir}/maps`, dev, ino, into)) return pid;
  for (const tid of readdirSync(`${dir}/task`)) {
    if (tid === String(pid)) continue;
    try {
      if (grepMaps(pid, `${dir}/task/${tid}/maps`, dev, ino, into)) return Number(tid);
    } catch (err) {
      throwIfShortage(err);
      // that thread exited meanwhile: another may still run
    }
  }
  return null;
}

/** The read buffer of maps files (scans are synchronous: one at a time). */
const CHUNK = Buffer.allocUnsafe(64 * 1024);
/**
 * How much of a maps line is looked at: "start-end perms offset dev inode" is at most some 100 bytes (16 hex
 * digits each for start, end and offset, a 20-digit inode); the path after it can be any length.
 */
const HEAD = 160;

/** Reads maps file `path` line by line; whether it had any line (an empty maps: no mm to read). */
function grepMaps(pid: number, path: string, dev: string, ino: string, into: MappingFound[]): boolean {
  const needle = ` ${dev} ${ino} `;
  const fd = openSync(path, 'r');
  let any = false;
  try {
    let line = ''; // the head of the line being read
    let skipping = false; // past the head of a long line: its rest is dropped up to the newline
    for (
      let n = readSync(fd, CHUNK, 0, CHUNK.length, null);
      n > 0;
      n = readSync(fd, CHUNK, 0, CHUNK.length, null)
    ) {
      any = true;
      const buf = CHUNK.subarray(0, n);
      for (let at = 0; at < n; ) {
        const nl = buf.indexOf(10, at);
        const end = nl < 0 ? n : nl;
        if (!skipping) {
          line += buf.toString('latin1', at, Math.min(end, at + HEAD - line.length));
          skipping = line.length >= HEAD;
        }
        if (end === n) break; // the line goes on in the next read
        if (line.includes(needle)) parseMapping(pid, line, dev, ino, into);
        line = '';
        skipping = false;
        at = end + 1;
      }
    }
    if (line.includes(needle)) parseMapping(pid, line, dev, ino, into);
  } finally {
    closeSync(fd);
  }
  return any;
}

/** The mappings of `target` a maps-format file lists (for tests of the line reader: proc's files are made here). */
export function mappingsInFile(path: string, pid: number, target: FileIdentity): MappingFound[] {
  const into: MappingFound[] = [];
  grepMaps(pid, path, mapsDev(target.dev), target.ino.toString(), into);
  return into;
}

function parseMapping(pid: number, line: string, dev: string, ino: string, into: MappingFound[]): void {
  // start-end perms offset dev inode [path]
  const [range = '', perms = '', offset = '0', d, i] = line.split(/\s+/);
  if (d !== dev || i !== ino) return;
  const [s = '0', e = '0'] = range.split('-');
  into.push({ pid, start: BigInt(`0x${s}`), end: BigInt(`0x${e}`), offset: BigInt(`0x${offset}`), perms });
}

/**
 * `tid`: `procDir` is that thread's, read for a file table of its own (file-tables.ts), its fds counted against
 * `budget`.
 */
function scanFds(
  pid: number,
  procDir: string,
  target: FileIdentity,
  into: FdHolding[],
  tid?: number,
  budget?: TableFdBudget,
): void {
  const dir = `${procDir}/fd`;
  let names: string[];
  try {
    // Another thread's table: listed only as far as the process's budget goes (file-tables.ts).
    names = budget ? budget.list(dir) : readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EACCES') throw err;
    scanFdinfo(pid, procDir, target, into, err as Error, tid, budget);
    return;
  }
  for (const name of names) {
    let link: string;
    try {
      link = readlinkSync(`${dir}/${name}`);
    } catch {
      continue; // closed while we looked
    }
    // A device node removed (udev, by hand) while open: each fd's link reads so, and stat still names the file.
    if (link !== target.link && link !== `${target.link} (deleted)`) continue;
    try {
      const st = statSync(`${dir}/${name}`, { bigint: true });
      if (st.dev !== target.dev || st.ino !== target.ino || st.rdev !== target.rdev) continue;
    } catch {
      continue;
    }
    const fd = Number(name);
    if (target.syspath !== null) {
      const sp = fdinfoField(readFdinfo(`${procDir}/fdinfo/${fd}`), 'vfio-device-syspath');
      if (sp !== null && sp !== target.syspath) continue; // another VFIO device on the same anon inode
    }
    into.push(tid === undefined ? { pid, fd } : { pid, fd, tid });
  }
}

/**
 * fd/ of another uid's process is mode 0500, its owner's: listing it takes CAP_DAC_READ_SEARCH, which the
 * broker as shipped has not (contrib/systemd: User=devlease, CAP_SYS_PTRACE only), so it saw no fd of any
 * client of another uid. fdinfo/ takes ptrace read access only, and each fd's `mnt_id` and `ino` name its file
 * as (dev, ino) do: one small read per fd instead of a readlink. An anonymous inode (the group path's VFIO
 * device fd) shares both with every other anonymous-inode file (eventfds, epolls): told apart only by
 * `vfio-device-syspath`, and where the kernel prints none the process stays unread (`cause` is thrown).
 */
function scanFdinfo(
  pid: number,
  procDir: string,
  target: FileIdentity,
  into: FdHolding[],
  cause: Error,
  tid?: number,
  budget?: TableFdBudget,
): void {
  const anon = target.link.startsWith('anon_inode:');
  if (target.mntId === null || (anon && target.syspath === null)) throw cause;
  const ino = target.ino.toString();
  const names = budget ? budget.list(`${procDir}/fdinfo`) : readdirSync(`${procDir}/fdinfo`);
  for (const name of names) {
    const text = readFdinfo(`${procDir}/fdinfo/${name}`);
    if (fdinfoField(text, 'ino') !== ino || Number(fdinfoField(text, 'mnt_id')) !== target.mntId) continue;
    const sp = fdinfoField(text, 'vfio-device-syspath');
    if (target.syspath !== null && (anon ? sp !== target.syspath : sp !== null && sp !== target.syspath))
      continue;
    into.push(tid === undefined ? { pid, fd: Number(name) } : { pid, fd: Number(name), tid });
  }
}

/** fdinfo's head: its fixed fields (pos, flags, mnt_id, ino) and a VFIO device's syspath come first. */
const FDINFO_HEAD = Buffer.allocUnsafe(4096);

/**
 * An fdinfo file's head ('' once its fd is closed). Not the whole file: an epoll's fdinfo has a line per fd it
 * watches and an inotify's per watch, so any process can make one tens of MB long (as a maps file: above).
 */
function readFdinfo(path: string): string {
  const n = readHead(path, FDINFO_HEAD);
  return n === null ? '' : FDINFO_HEAD.toString('latin1', 0, n);
}

function fdinfoField(text: string, name: string): string | null {
  return new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(text)?.[1] ?? null;
}
