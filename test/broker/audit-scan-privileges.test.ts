// The /proc audit of direct slices (src/broker/audit-scan) with the privileges the broker is shipped with
// (contrib/systemd/devlease@.service: User=devlease, CAP_SYS_PTRACE its one capability), against a client of
// another uid. /proc/<pid>/fd of another uid's process is mode 0500, its owner's: listing it takes
// CAP_DAC_READ_SEARCH, which ptrace access does not give; /proc/<pid>/fdinfo takes ptrace access only. A
// real scan runs in a child process made another uid with CAP_SYS_PTRACE (setpriv, util-linux); the client
// is a root process holding an fd of, and mapping, the file.
import assert from 'node:assert/strict';
import { type ChildProcess, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, startMapper } from '../helpers/mapper.js';
import { startOwnTables } from '../helpers/own-file-table.js';

const here = dirname(fileURLToPath(import.meta.url));
const scanner = join(here, '../fixtures/audit/scanner.js');
let dir = '';
let file = '';
const children: ChildProcess[] = [];

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  dir = mkdtempSync(join(tmpdir(), 'devlease-audit-priv-'));
  chmodSync(dir, 0o755);
  file = join(dir, 'bar');
  const fd = openSync(file, 'w+', 0o644);
  ftruncateSync(fd, 4 * 4096);
  closeSync(fd);
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await closeMappers();
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

/**
 * Runs the scanner as uid/gid 65534 (nobody) with CAP_SYS_PTRACE as its only capability (`ptrace` false: with
 * no capability at all).
 */
function scanAsBroker(ptrace = true): {
  fds: number[];
  maps: number[];
  unreadable: number;
  partial: number[];
} {
  const caps = ptrace
    ? ['--inh-caps=-all,+sys_ptrace', '--ambient-caps=-all,+sys_ptrace', '--bounding-set=-all,+sys_ptrace']
    : ['--inh-caps=-all', '--bounding-set=-all'];
  const r = spawnSync(
    'setpriv',
    ['--reuid=65534', '--regid=65534', '--clear-groups', ...caps, process.execPath, scanner, file],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, `the scanner (setpriv, util-linux) failed: ${r.error?.message ?? ''}${r.stderr}`);
  return JSON.parse(r.stdout);
}

test("a scan with the broker's shipped privileges sees the fd a client of another uid holds", async () => {
  assert.equal(
    process.getuid?.(),
    0,
    'this test needs root: it runs a scan as another uid with CAP_SYS_PTRACE',
  );
  // A root process (another uid than the scanner's) that maps a page of the file and keeps its fd.
  const m = await startMapper(file, 0, 4096, ['--keep-fd']);
  const proc = m.proc;
  try {
    const r = scanAsBroker();
    assert.deepEqual(r.maps, [proc.pid], 'its mapping (maps takes ptrace access only)');
    assert.deepEqual(r.fds, [proc.pid], 'its fd of the file: fd-kept, fd-passed are found');
  } finally {
    await m.close();
  }
});

test("with the broker's shipped privileges, an fd kept in a thread's own file table of another uid's client is seen", async () => {
  assert.equal(
    process.getuid?.(),
    0,
    'this test needs root: it runs a scan as another uid with CAP_SYS_PTRACE',
  );
  // A root process whose thread keeps the file in a table of its own (unshare(CLONE_FILES)), the main thread's
  // copy closed: told apart by kcmp (ptrace read access: CAP_SYS_PTRACE), read through the thread's fdinfo/.
  const p = await startOwnTables({ mode: 'keep', own: 1, file });
  children.push(p.proc);
  try {
    const r = scanAsBroker();
    assert.deepEqual(r.fds, [p.pid], 'its fd of the file, in the thread');
  } finally {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
});

test("kcmp refused on one thread (EPERM: another uid's) passes over that thread alone: the tables after it are read", async () => {
  assert.equal(process.getuid?.(), 0, 'this test needs root: it runs a scan as another uid');
  // The process is nobody's but for its first thread after the main one, left root's (its own credentials: a
  // raw setresuid in the main thread changed the main thread's alone). A scanner of uid 65534 without
  // CAP_SYS_PTRACE may compare every thread but that one. Stopping at its EPERM hid every later table.
  const p = await startOwnTables({ mode: 'keep', own: 1, shared: 2, nobodyBut: 1, file });
  children.push(p.proc);
  try {
    const r = scanAsBroker(false);
    assert.deepEqual(r.fds, [p.pid], "the fd in the own table after the refused thread's");
    assert.ok(r.partial.includes(p.pid), 'the refused thread counted: the process read in part');
  } finally {
    p.proc.kill('SIGKILL');
    await p.exited;
  }
});

test("devlease status counts the processes the last scan could not read (without CAP_SYS_PTRACE: root's)", async () => {
  // This process is root's, alive through the scan: unreadable to a scanner of another uid without ptrace.
  const r = spawnSync(
    'setpriv',
    [
      '--reuid=65534',
      '--regid=65534',
      '--clear-groups',
      '--inh-caps=-all',
      '--bounding-set=-all',
      process.execPath,
      join(here, '../fixtures/audit/audit-status.js'),
      file,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 0, `the scan (setpriv, util-linux) failed: ${r.error?.message ?? ''}${r.stderr}`);
  const status = JSON.parse(r.stdout) as {
    scans: number;
    processesScanned: number;
    processesUnreadable: number;
  };
  assert.equal(status.scans, 1);
  assert.ok(status.processesUnreadable >= 1, `root's processes are unreadable to it: ${r.stdout}`);
  assert.ok(status.processesUnreadable <= status.processesScanned, r.stdout);
  // With CAP_SYS_PTRACE (the shipped privileges) this process is read: fewer are left unreadable.
  const withPtrace = scanAsBroker();
  assert.ok(withPtrace.unreadable < status.processesUnreadable, JSON.stringify(withPtrace));
});
