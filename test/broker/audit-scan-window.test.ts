// The moving window of the /proc audit's walk of threads' own file tables (src/broker/audit-scan/file-tables.ts):
// a process of more threads or tables than one scan reads is read a window a scan, the next scan going on
// where the last stopped. Real python3 processes (test/helpers/own-file-table.ts) keep a real file standing in
// for the device file in a thread's own table (unshare(CLONE_FILES)), past the first window.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { auditStatus } from '../../src/broker/audit-scan/direct-slices.js';
import {
  forEachOtherFileTable,
  MAX_COMPARES,
  MAX_TABLE_FDS,
  MAX_TABLES,
  TableCursors,
  TableFdBudget,
} from '../../src/broker/audit-scan/file-tables.js';
import { type FileIdentity, identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { native } from '../../src/sys/native.js';
import { countingListings } from '../helpers/dir-listing.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { type OwnTables, startOwnTables } from '../helpers/own-file-table.js';
import { pidfdOf, signal } from '../helpers/pidfd.js';
import { testAuditor } from '../helpers/slice-auditor.js';

/** Threads sharing the main table, made first: the own table's thread comes after, in the second window. */
const SHARED = MAX_COMPARES + 100;
/** Scans in a round of such a process: its task/ holds SHARED + 2 threads, one window a scan. */
const ROUND = 2;

let dir = '';
let file = '';
let fileFd = -1;
let target: FileIdentity;
let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  dir = mkdtempSync(join(tmpdir(), 'devlease-audit-window-'));
  file = join(dir, 'bar');
  fileFd = openSync(file, 'w+');
  ftruncateSync(fileFd, 4096);
  target = identityOfFd(fileFd);
});
after(() => {
  closeSync(fileFd);
  rmSync(dir, { recursive: true, force: true });
  return leakCheck();
});

async function withProcess(
  opts: Omit<Parameters<typeof startOwnTables>[0], 'file'>,
  body: (p: OwnTables) => void | Promise<void>,
) {
  const p = await startOwnTables({ ...opts, file });
  try {
    await body(p);
  } finally {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
}

/** Scans with `cursors`, committed as the auditor does once a scan; the fds found in `pid`. */
function scanFds(cursors: TableCursors, pid: number) {
  const r = scanProc(target, new Set([process.pid]), cursors);
  cursors.commit();
  return { r, fds: r.fds.filter((f) => f.pid === pid) };
}

/** An auditor of a lease `pid` holds, past its hand-off: a kept fd is fd-kept. */
function auditorOf(pid: number) {
  const t = testAuditor(target);
  t.a.add('l1', pid, [{ start: 0n, end: 4096n }]);
  t.a.onRequest('l1', true);
  const records = (event: string) => t.audit.recent.filter((e) => e.event === event && e.pid === pid);
  return { ...t, records };
}

/** Counts the kcmp calls comparing a thread of `tids` while `body` runs (the walk's per-scan bound). */
function countingKcmp<T>(tids: ReadonlySet<number>, body: () => T): { result: T; compares: number } {
  const real = native.kcmpFiles;
  let compares = 0;
  native.kcmpFiles = (a, b) => {
    if (tids.has(b)) compares++;
    return real(a, b);
  };
  try {
    return { result: body(), compares };
  } finally {
    native.kcmpFiles = real;
  }
}

test('scan window: a device fd kept in a thread past the first MAX_COMPARES is found within a round, each scan within the bound; fd-kept and audit-incomplete recorded once', async () => {
  // Before the window moved, every scan compared the same first 1,024 threads: never found.
  await withProcess({ mode: 'keep', own: 1, shared: SHARED }, (p) => {
    const [t] = p.own;
    const tids = native.taskIdsFrom(p.pid, 0, 1 << 20);
    assert.equal(tids.length, SHARED + 2, 'main, shared and own threads');
    // The listing from a position (one lseek: native.taskIdsFrom) is the whole listing's rest; past it, none.
    assert.deepEqual(native.taskIdsFrom(p.pid, 1000, 50), tids.slice(1000, 1050));
    assert.deepEqual(native.taskIdsFrom(p.pid, tids.length, 50), []);
    assert.ok(tids.indexOf(t!.tid) > MAX_COMPARES + 1, "the own table's thread is past the first window");
    const { a, records } = auditorOf(p.pid);
    try {
      const perScan: number[] = [];
      for (let i = 0; i < ROUND && records('audit-violation').length === 0; i++)
        perScan.push(countingKcmp(new Set(tids), () => a.scan()).compares);
      assert.deepEqual(
        records('audit-violation').map((e) => [e.finding, e.detail]),
        [
          [
            'fd-kept',
            `holds the device fd as fd ${t!.fd} of thread ${t!.tid}'s own file table (unshare(CLONE_FILES))`,
          ],
        ],
        `found within ${ROUND} scans`,
      );
      assert.equal(perScan.length, ROUND, 'not in the first scan: that window ends before the thread');
      for (const n of perScan)
        assert.ok(n <= MAX_COMPARES, `kcmp calls on this process per scan: ${perScan}`);
      assert.ok(
        (auditStatus(a).processesReadInPart as number) >= 1,
        'devlease status counts it read in part',
      );
      // Two rounds more: the windows that do not see the fd neither forget nor record it again.
      for (let i = 0; i < 2 * ROUND; i++) a.scan();
      assert.equal(records('audit-violation').length, 1, 'fd-kept recorded once');
      assert.deepEqual(
        records('audit-incomplete').map((e) => e.reason),
        ['rotating'],
        'recorded once: read over several scans',
      );
    } finally {
      a.close();
    }
  });
});

test('audit-incomplete: a process whose reason changes from scan to scan (a window past the bounds, one with an unread table) is recorded once per reason, rotating then unread', async () => {
  // The second window holds a table over MAX_TABLE_FDS, read by no scan: that scan's reason is `unread`, the
  // others' `rotating`. Keyed by reason, the record alternated and was written at every scan; keyed once, the
  // first scan's `rotating` was all that was said of a table never read.
  const unreadEach = (pid: number, scan: () => ReturnType<ReturnType<typeof auditorOf>['a']['scan']>) => {
    const unread: boolean[] = [];
    for (let i = 0; i < 6; i++) unread.push(scan()!.unreadTables.includes(pid));
    assert.ok(
      !unread[0] && unread.filter(Boolean).length >= 2,
      `the first window is without the table: ${unread}`,
    );
  };
  await withProcess({ mode: 'keep', own: 1, shared: SHARED, decoys: 1, decoyPadFds: MAX_TABLE_FDS }, (p) => {
    const { a, records } = auditorOf(p.pid);
    try {
      unreadEach(p.pid, () => a.scan());
      assert.deepEqual(
        records('audit-incomplete').map((e) => e.reason),
        ['rotating', 'unread'],
        'each reason recorded once, in the scan that first gives it',
      );
      assert.equal(records('audit-violation').length, 1, 'the fd behind the unread table is found, once');
    } finally {
      a.close();
    }
  });
  // The device fd kept in that unread table itself: never found, and `unread` is what says so.
  await withProcess({ mode: 'keep', own: 1, shared: SHARED, padFds: MAX_TABLE_FDS }, (p) => {
    const { a, records } = auditorOf(p.pid);
    try {
      unreadEach(p.pid, () => a.scan());
      assert.deepEqual(
        records('audit-incomplete').map((e) => e.reason),
        ['rotating', 'unread'],
      );
      assert.equal(records('audit-violation').length, 0, 'its fd is in the table no scan reads');
    } finally {
      a.close();
    }
  });
});

test('scan bounds: a table over MAX_TABLE_FDS is listed only up to the budget and charged: each walk passes over one at most, and ends there', async () => {
  // Listed whole and passed over free of charge, every such table in a window was listed at every scan (16 of
  // 12,000 fds: 192,096 fds a scan). Three of them before the one holding the file: one a walk.
  const decoys = 3;
  await withProcess({ mode: 'keep', own: 1, decoys, decoyPadFds: MAX_TABLE_FDS + 8 }, (p) => {
    const [t] = p.own;
    const walks: { read: number[]; charged: number; listed: number; unread: number }[] = [];
    let from = 0;
    do {
      const budget = new TableFdBudget();
      const read: number[] = [];
      // The entries listed of threads' fd/, counted outside list(): its own charge passed a table listed whole.
      const { result: w, listed } = countingListings(
        (path) => /\/task\/\d+\/fd$/.test(path),
        () =>
          forEachOtherFileTable(
            p.pid,
            p.pid,
            (d, tid) => {
              read.push(tid);
              budget.list(`${d}/fd`);
            },
            from,
          ),
      );
      walks.push({ read, charged: budget.whole - budget.left, listed, unread: w.unread });
      from = w.next;
    } while (from !== 0 && walks.length < 8);
    for (const w of walks) {
      assert.ok(w.unread <= 1, `one table passed over a walk at most: ${JSON.stringify(walks)}`);
      assert.ok(w.listed <= MAX_TABLE_FDS + 1, `fds listed a walk: ${JSON.stringify(walks)}`);
      assert.equal(w.charged, Math.min(w.listed, MAX_TABLE_FDS), 'each entry listed charged');
    }
    assert.equal(walks.length, decoys + 1, 'each table over the budget costs a walk of its own');
    assert.ok(walks.at(-1)!.read.includes(t!.tid), 'the last walk reads the table holding the file');
    const cursors = new TableCursors();
    const found = walks.map(() => scanFds(cursors, p.pid).fds.length);
    assert.deepEqual(found, [0, 0, 0, 1], 'seen by the fourth scan');
  });
});

test('report once: an fd finding of a process always read in part is forgotten once a whole round has passed without it, so its return is recorded', async () => {
  await withProcess({ mode: 'keep', own: 1, shared: SHARED }, async (p) => {
    const { a, records } = auditorOf(p.pid);
    const kept = () => records('audit-violation').length;
    try {
      for (let i = 0; i < ROUND && kept() === 0; i++) a.scan();
      assert.equal(kept(), 1, 'found within a round');
      await p.command('close');
      // The round it was seen in, then a whole round without it (the rule: report-once.ts).
      for (let i = 0; i < 2 * ROUND; i++) a.scan();
      await p.command('open');
      for (let i = 0; i < ROUND && kept() === 1; i++) a.scan();
      assert.equal(kept(), 2, 'the fd kept again is recorded again');
      const places: unknown[] = [];
      for (let i = 0; i < 2 * ROUND; i++) places.push(a.scan()!.windows.get(p.pid));
      assert.equal(kept(), 2, 'and once: the windows that do not see it keep it');
      assert.ok(
        places.every((w) => w !== undefined),
        'read in part at every scan',
      );
    } finally {
      a.close();
    }
  });
});

/** Blocks this thread (and its event loop) for `ms`. */
const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

test("upgrade: the scan run again when the other broker exits during it reads the same windows: the walk moves on once, and the first window's fd is found", async () => {
  // The other broker stands in as a sleep whose shell waits for it: killed, it is reaped at once by the shell
  // (a process of its own, while this event loop is blocked in the scan), so its pid is free: the scan's check
  // after the walk sees it gone and scans again. Moved on by each pass, the second read the next window.
  const sh = spawn('sh', ['-c', 'sleep 600 & echo $!; wait'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const shClosed = new Promise<void>((r) => sh.once('close', () => r()));
  const brokerPid = Number(
    await new Promise<string>((r) => createInterface({ input: sh.stdout! }).once('line', r)),
  );
  const broker = pidfdOf(brokerPid, 'the stand-in broker');
  try {
    await withProcess({ mode: 'keep', own: 1, shared: SHARED }, (p) => {
      const tids = new Set(native.taskIdsFrom(p.pid, 0, 1 << 20));
      const { a, records } = auditorOf(p.pid);
      try {
        a.allowBroker(brokerPid);
        const first = a.scan()!;
        assert.deepEqual(first.windows.get(p.pid)?.ended, false, 'the first window ends before the thread');
        assert.equal(records('audit-violation').length, 0);
        const real = native.kcmpFiles;
        let killed = false;
        native.kcmpFiles = (x, y) => {
          if (!killed && tids.has(y)) {
            killed = true;
            signal(broker, 'SIGKILL');
            for (let i = 0; i < 2000 && existsSync(`/proc/${brokerPid}`); i++) sleepSync(5);
          }
          return real(x, y);
        };
        let second: ReturnType<typeof a.scan>;
        try {
          second = a.scan();
        } finally {
          native.kcmpFiles = real;
        }
        assert.ok(killed && !existsSync(`/proc/${brokerPid}`), 'the broker exited during the scan');
        assert.deepEqual(
          second!.windows.get(p.pid),
          { start: first.windows.get(p.pid)!.start, round: 0, ended: true },
          'the pass kept read the second window',
        );
        assert.deepEqual(
          records('audit-violation').map((e) => e.finding),
          ['fd-kept'],
          'its fd found',
        );
        const third = a.scan()!;
        assert.deepEqual(
          [third.windows.get(p.pid)?.round, third.windows.get(p.pid)?.ended],
          [1, false],
          'the walk moved on once in that scan: the next starts the next round',
        );
      } finally {
        a.close();
      }
    });
  } finally {
    signal(broker, 'SIGKILL');
    broker.close();
    sh.kill('SIGKILL');
    await shClosed;
  }
});

test('scan window: the cursor is kept per process while it is walked in part, and dropped once the process is gone', async () => {
  const cursors = new TableCursors();
  let pid = 0;
  let before = 0;
  await withProcess({ mode: 'keep', own: 1, shared: SHARED }, (p) => {
    pid = p.pid;
    const first = scanFds(cursors, p.pid);
    assert.ok(first.r.partial.includes(p.pid) && !first.r.unreadTables.includes(p.pid));
    assert.equal(first.fds.length, 0, 'the first window ends before the thread');
    assert.ok(cursors.size >= 1, 'where its walk goes on is kept');
    // The second window reads it; not committed, that scan moved nothing: the next reads the same window.
    const uncommitted = scanProc(target, new Set([process.pid]), cursors);
    assert.equal(uncommitted.fds.filter((f) => f.pid === pid).length, 1, 'the second window reads it');
    assert.equal(scanFds(cursors, p.pid).fds.length, 1, 'and the next scan reads the same window');
    // Without the cursors each scan starts over: the fd stays unseen.
    assert.equal(scanProc(target, new Set([process.pid])).fds.filter((f) => f.pid === p.pid).length, 0);
    scanFds(cursors, p.pid);
    before = cursors.size;
  });
  const r = scanFds(cursors, pid).r;
  assert.ok(!r.partial.includes(pid));
  assert.ok(cursors.size < before, `the gone process's entry is dropped (${before} -> ${cursors.size})`);
  assert.ok(cursors.size <= r.partial.length, 'no more entries than processes walked in part');
});

test('scan window: a device fd in a table past the first MAX_TABLES is read by a later scan; no walk reads more than MAX_TABLES', async () => {
  // Decoys: tables of their own without the file, made before the one holding it (earlier in task/'s order).
  await withProcess({ mode: 'keep', own: 1, decoys: MAX_TABLES + 4 }, (p) => {
    const [t] = p.own;
    const reads: number[][] = [];
    let from = 0;
    do {
      const read: number[] = [];
      from = forEachOtherFileTable(p.pid, p.pid, (_dir, tid) => read.push(tid), from).next;
      reads.push(read);
    } while (from !== 0 && reads.length < 4);
    assert.deepEqual(
      reads.map((r) => r.length),
      [MAX_TABLES, 5],
      'a round of two walks: 16 tables, then the 4 decoys left and the one holding the file',
    );
    assert.ok(reads[1]!.includes(t!.tid), 'the second walk reads the table holding the file');
    const cursors = new TableCursors();
    assert.deepEqual(
      [0, 1].map(() => scanFds(cursors, p.pid).fds.length),
      [0, 1],
      'seen by the second scan',
    );
  });
});
