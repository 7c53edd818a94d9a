// The /proc audit of direct slices (src/broker/audit-scan) across a real pid reuse: a process the audit
// recorded exits, and another is given its pid (as root, through ns_last_pid; pids wrap at pid_max, 32768 on
// a small machine, so a long-lived broker sees it happen). The audit names processes by pid, the only name
// /proc gives them: what it recorded of the first must neither spare nor hit the second.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, writeFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type FileIdentity, identityOfFd } from '../../src/broker/audit-scan/proc-scan.js';
import { native } from '../../src/sys/native.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, startMapper } from '../helpers/mapper.js';
import { testAuditor } from '../helpers/slice-auditor.js';

const PAGE = 4096n;
const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';
let memfd = -1;
/** The memfd as a path other processes open (a new description of the same file). */
let file = '';
let target: FileIdentity;
const children: ChildProcess[] = [];

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  memfd = native.memfdCreate('devlease-audit-pids', 0);
  native.ftruncate(memfd, 16 * 4096);
  file = `/proc/${process.pid}/fd/${memfd}`;
  target = identityOfFd(memfd);
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await closeMappers();
  native.close(memfd);
  await leakCheck();
});

function canSetPid(): boolean {
  try {
    accessSync(NS_LAST_PID, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function track(p: ChildProcess): { proc: ChildProcess; exited: Promise<void> } {
  children.push(p);
  return { proc: p, exited: new Promise<void>((r) => p.once('exit', () => r())) };
}

/** A process that holds an fd of the file (as fd 3) and sleeps; `sh` execs `sleep` with the fd open. */
const holdingFd = () => spawn('sh', ['-c', 'exec sleep 60 3<>"$0"', file], { stdio: 'ignore' });

/** Runs `make` until the process it makes is given `pid` (freed: its process reaped); throws after 50 tries. */
async function withPid(pid: number, make: () => ChildProcess): Promise<ChildProcess> {
  await until(`pid ${pid} to be free (its process reaped)`, () => !existsSync(`/proc/${pid}`), 30_000);
  for (let i = 0; i < 50; i++) {
    writeFileSync(NS_LAST_PID, String(pid - 1));
    const p = make();
    children.push(p);
    if (p.pid === pid) return p;
    p.kill('SIGKILL');
  }
  throw new Error(`no process got pid ${pid} in 50 tries`);
}

function auditor() {
  return testAuditor(target);
}

test("a process given the pid of one whose violation was recorded is recorded for its own (it was not: the record's key is the pid)", async () => {
  assert.ok(canSetPid(), `this test needs root: it writes ${NS_LAST_PID} to give a new process a chosen pid`);
  const { a, audit } = auditor();
  const first = track(holdingFd());
  let second: ChildProcess | null = null;
  const violations = (pid: number) =>
    audit.recent.filter((r) => r.event === 'audit-violation' && r.pid === pid && r.finding === 'fd-passed');
  try {
    a.add('l1', process.pid, [{ start: 0n, end: PAGE }]); // some lease, so that scans run
    const pid = first.proc.pid!;
    await until('the first process to open the file', () => a.scan()!.fds.some((f) => f.pid === pid));
    assert.equal(violations(pid).length, 1, 'the first process is recorded');
    first.proc.kill('SIGKILL');
    await first.exited;
    // No scan while the pid is free: the pid is given again between two scans (period_ms apart, or longer under
    // the duty cycle), so what tells the second process from the first is its start time, not a scan without it.
    second = await withPid(pid, holdingFd);
    await until('the second process to open the file', () => a.scan()!.fds.some((f) => f.pid === pid));
    assert.equal(
      violations(pid).length,
      2,
      `the second process is recorded too: ${JSON.stringify(audit.recent)}`,
    );
  } finally {
    a.close();
    second?.kill('SIGKILL');
    first.proc.kill('SIGKILL');
  }
});

test("a violator that exited is not killed at its lease's revoke deadline in the person of the process given its pid", async () => {
  assert.ok(canSetPid(), `this test needs root: it writes ${NS_LAST_PID} to give a new process a chosen pid`);
  const { a, audit } = auditor();
  // The holder maps the page after its slice and forks a child that inherits the mapping: both violators of l1.
  // Its child is held by the helper's pidfd, taken while it is alive: it names the child, not whoever has its
  // pid later.
  const holder = await startMapper(file, PAGE, PAGE, ['--fork']);
  const child = holder.child!;
  try {
    a.add('l1', holder.proc.pid!, [{ start: 0n, end: PAGE }]);
    a.onRequest('l1', true);
    a.scan();
    const found = audit.recent.filter((r) => r.event === 'audit-violation').map((r) => [r.pid, r.finding]);
    assert.deepEqual(
      found.sort(),
      [
        [holder.proc.pid, 'mapping-outside-slice'],
        [child, 'mapping-outside-slice'],
      ].sort(),
    );
    // The holder goes (this process reaps it), then its re-parented child (init reaps it): its pid is free.
    holder.kill();
    await holder.exited;
    holder.killChild();
    const innocent = track(await withPid(child, () => spawn('sleep', ['60'], { stdio: 'ignore' })));
    a.killMappers('l1'); // the revoke's deadline
    assert.deepEqual(
      audit.recent.filter((r) => r.event === 'audit-kill').map((r) => r.pid),
      [],
      'no process killed: both violators are gone, whoever has their pids now',
    );
    innocent.proc.kill('SIGTERM');
    await innocent.exited;
    assert.equal(innocent.proc.signalCode, 'SIGTERM', 'it lived until this test ended it');
  } finally {
    a.close();
    // Through its pidfd, never its pid: once it is gone the pid may be another process's (another test's).
    await holder.close();
  }
});
