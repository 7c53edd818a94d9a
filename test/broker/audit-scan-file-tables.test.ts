// The /proc audit of direct slices (src/broker/audit-scan) against a process whose threads keep the device fd in
// file tables of their own (unshare(CLONE_FILES)): /proc/<pid>/fd lists the main thread's table only, so such
// an fd was unseen, and neither fd-kept nor fd-passed reported. Real processes (python3: ctypes reaches
// unshare) hold a real memfd standing in for the VFIO device file.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { forEachOtherFileTable, MAX_TABLE_FDS } from '../../src/broker/audit-scan/file-tables.js';
import { type FileIdentity, identityOfFd, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { native } from '../../src/sys/native.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { type OwnTables, startOwnTables } from '../helpers/own-file-table.js';
import { testAuditor } from '../helpers/slice-auditor.js';

let memfd = -1;
let target: FileIdentity;

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  memfd = native.memfdCreate('devlease-audit-tables', 0);
  native.ftruncate(memfd, 4096);
  target = identityOfFd(memfd);
});
after(() => {
  native.close(memfd);
  return leakCheck();
});

async function withProcess(
  opts: Omit<Parameters<typeof startOwnTables>[0], 'file'>,
  body: (p: OwnTables) => void,
) {
  const p = await startOwnTables({ ...opts, file: memfd });
  try {
    // The main thread's exit follows the report: wait until /proc says it is a zombie (its maps read empty).
    for (
      const end = Date.now() + 10_000;
      opts.exitMain && readFileSync(`/proc/${p.pid}/maps`, 'latin1') !== '';
    ) {
      if (Date.now() > end) throw new Error(`pid ${p.pid}: the main thread did not exit within 10 s`);
      await new Promise((r) => setTimeout(r, 10));
    }
    // What the scan read before: the main thread's table, where the file is not (the gap this closes).
    const links = readdirSync(`/proc/${p.pid}/fd`).map((n) => {
      try {
        return readlinkSync(`/proc/${p.pid}/fd/${n}`);
      } catch {
        return '';
      }
    });
    assert.ok(!links.includes(target.link), `the main thread's table holds no fd of the file: ${links}`);
    body(p);
  } finally {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
}

function auditor() {
  return testAuditor(target);
}

test("audit: a holder keeping the device fd only in a thread's own file table is fd-kept", async () => {
  await withProcess({ mode: 'keep', own: 1, shared: 2 }, (p) => {
    const [t] = p.own;
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.fds.filter((f) => f.pid === p.pid),
      [{ pid: p.pid, fd: t!.fd, tid: t!.tid }],
      'the fd, in the thread that holds it',
    );
    const { a, audit } = auditor();
    try {
      a.add('l1', p.pid, [{ start: 0n, end: 4096n }]);
      a.onRequest('l1', true); // the hand-off is over: a kept fd is a violation
      a.scan();
      const v = audit.recent.filter((e) => e.event === 'audit-violation' && e.pid === p.pid);
      assert.deepEqual(
        v.map((e) => e.finding),
        ['fd-kept'],
      );
      assert.match(String(v[0]!.detail), new RegExp(`fd ${t!.fd} of thread ${t!.tid}'s own file table`));
    } finally {
      a.close();
    }
  });
});

test("audit: a device fd received (SCM_RIGHTS) into threads' own file tables is fd-passed", async () => {
  await withProcess({ mode: 'receive', own: 2 }, (p) => {
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.fds
        .filter((f) => f.pid === p.pid)
        .map((f) => f.tid)
        .sort(),
      p.own.map((t) => t.tid).sort(),
      'each table holding it is read',
    );
    // This test process holds the lease: its child holding the device fd has been passed it.
    const { a, audit } = auditor();
    try {
      a.add('l1', process.pid, [{ start: 0n, end: 4096n }]);
      a.onRequest('l1', true);
      a.scan();
      const v = audit.recent.filter((e) => e.event === 'audit-violation' && e.pid === p.pid);
      assert.deepEqual(
        v.map((e) => [e.finding, e.lease]),
        [['fd-passed', 'l1']],
      );
    } finally {
      a.close();
    }
  });
});

test('scan bounds: each distinct table read once; past the kcmp or table bound the process is not fully read', async () => {
  await withProcess({ mode: 'keep', own: 3, shared: 4 }, (p) => {
    const walk = (limits?: { compares: number; tables: number }) => {
      const read: number[] = [];
      const w = forEachOtherFileTable(p.pid, p.pid, (_dir, tid) => read.push(tid), 0, limits);
      return { all: w.done && w.unread === 0, read };
    };
    const full = walk();
    assert.equal(full.all, true);
    assert.deepEqual(
      full.read.sort(),
      p.own.map((t) => t.tid).sort(),
      'the threads sharing the main table are not read; each own table once',
    );
    const fewTables = walk({ compares: 4096, tables: 2 });
    assert.deepEqual([fewTables.all, fewTables.read.length], [false, 2], 'two tables read, the third not');
    // 7 threads besides the main one: 7 compares at least.
    assert.equal(walk({ compares: 6, tables: 16 }).all, false, 'past the kcmp bound: not fully read');
    assert.equal(
      walk({ compares: 1, tables: 16 }).all,
      false,
      'one compare, task/ listed only in part: not fully read (the kcmp bound decides; truncation alone decides only when the main thread exited)',
    );
    const r = scanProc(target, new Set([process.pid]));
    assert.equal(
      r.fds.filter((f) => f.pid === p.pid).length,
      3,
      `the scan reads all three: ${JSON.stringify(r.fds)}`,
    );
  });
});

test("scan: a process whose main thread exited, read through a live thread, is seen holding the fd in another thread's own table", async () => {
  // One thread shares the (exited) main thread's table, where the file is not: the scan reads the process
  // through it (scanMaps picks the first live thread), and must still find the table that holds the fd.
  await withProcess({ mode: 'keep', own: 1, shared: 1, exitMain: true }, (p) => {
    const [t] = p.own;
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.fds.filter((f) => f.pid === p.pid),
      [{ pid: p.pid, fd: t!.fd, tid: t!.tid }],
    );
  });
});

test("scan bounds: a thread's own table of more fds than a scan reads is not read; a lease's process is reported audit-incomplete, once", async () => {
  // unshare copies the whole table: without a bound on the fds listed, one process could show the scan 17 times
  // its RLIMIT_NOFILE (~2 s of the broker's event loop at 19,000 fds). Past it the process is read in part.
  await withProcess({ mode: 'keep', own: 1, padFds: MAX_TABLE_FDS }, (p) => {
    const r = scanProc(target, new Set([process.pid]));
    assert.deepEqual(
      r.fds.filter((f) => f.pid === p.pid),
      [],
      'the table over the bound is not read',
    );
    assert.ok(r.partial.includes(p.pid), `counted as read in part: ${JSON.stringify(r.partial)}`);
    const { a, audit } = auditor();
    try {
      a.add('l1', p.pid, [{ start: 0n, end: 4096n }]);
      a.onRequest('l1', true);
      a.scan();
      a.scan();
      const rec = audit.recent.filter((e) => e.event === 'audit-incomplete');
      assert.deepEqual(
        rec.map((e) => [e.pid, e.lease]),
        [[p.pid, 'l1']],
        'recorded once, naming the lease',
      );
      assert.equal(a.stats.violations, 0, 'not a violation: nothing was found');
    } finally {
      a.close();
    }
  });
  // Under the bound the same table is read, and the fd found.
  await withProcess({ mode: 'keep', own: 1, padFds: 64 }, (p) => {
    const r = scanProc(target, new Set([process.pid]));
    assert.equal(r.fds.filter((f) => f.pid === p.pid).length, 1);
    assert.ok(!r.partial.includes(p.pid));
  });
});
