// The /proc audit of direct slices (src/broker/audit-scan), on the host: real
// processes map a regular file standing in for the VFIO device file (the
// scan matches it by dev:inode and offset exactly as it matches the device;
// the feature's real test is the guest's, test/kernel/guest/ivshmem.test.ts).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { DirectAuditConfig } from '../../src/broker/audit-scan/auditor.js';
import { type FileIdentity, identityOfFd, mapsDev, scanProc } from '../../src/broker/audit-scan/proc-scan.js';
import { until } from '../helpers/broker-rig.js';
import { openFds, trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, type Mapper, startMapper } from '../helpers/mapper.js';
import { testAuditor } from '../helpers/slice-auditor.js';

const PAGE = 4096n;
let dir = '';
let file = '';
let fileFd = -1;
let target: FileIdentity;
/** Processes this file started other than mappers (which closeMappers() ends). */
const children: ChildProcess[] = [];

let leakCheck: () => Promise<void> = async () => {};
before(() => {
  leakCheck = trackFdLeaks();
  dir = mkdtempSync(join(tmpdir(), 'devlease-audit-'));
  file = join(dir, 'bar');
  fileFd = openSync(file, 'w+');
  ftruncateSync(fileFd, 16 * 4096);
  target = identityOfFd(fileFd);
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await closeMappers();
  closeSync(fileFd);
  rmSync(dir, { recursive: true, force: true });
  return leakCheck();
});

/** Starts a mapper of the test's file; resolves once it has mapped (and closed or kept its fd, and forked). */
const mapPage = (offset: bigint, flags: string[] = []) => startMapper(file, offset, PAGE, flags);

function auditor(config: Partial<DirectAuditConfig> = {}) {
  return testAuditor(target, config);
}

const range = (page: bigint) => [{ start: page * PAGE, end: (page + 1n) * PAGE }];

test('maps dev numbers as /proc/<pid>/maps prints them', () => {
  assert.equal(mapsDev((8n << 8n) | 1n), '08:01');
  assert.equal(mapsDev(0x10n), '00:10');
  assert.equal(mapsDev((259n << 8n) | 3n), '103:03');
});

test('scan: finds each process mapping the file (dev:inode, offset) and each holding an fd of it', async () => {
  const m1 = await mapPage(0n);
  const m2 = await mapPage(PAGE * 3n, ['--keep-fd']);
  try {
    const r = scanProc(target, new Set([process.pid]));
    const m1maps = r.maps.filter((m) => m.pid === m1.pid);
    assert.equal(m1maps.length, 1, 'the closed-fd mapper still maps its page');
    assert.equal(m1maps[0]!.offset, 0n);
    assert.equal(m1maps[0]!.end - m1maps[0]!.start, PAGE);
    assert.deepEqual(
      r.maps.filter((m) => m.pid === m2.pid).map((m) => m.offset),
      [PAGE * 3n],
    );
    assert.deepEqual(
      r.fds.map((f) => f.pid),
      [m2.pid],
      'only the --keep-fd mapper holds an fd (the test process is excluded)',
    );
    assert.ok(r.processes > 2 && r.us > 0);
  } finally {
    m1.kill();
    m2.kill();
    await Promise.all([m1.exited, m2.exited]);
  }
});

test('audit: a holder mapping its own slice and closing the fd is clean; a kept fd and a neighbour page are recorded', async () => {
  const { a, audit } = auditor();
  const good = await mapPage(0n);
  const keeps = await mapPage(PAGE, ['--keep-fd']);
  const snoops = await mapPage(PAGE * 5n); // leased page 2, maps page 5
  try {
    a.add('good', good.pid, range(0n));
    a.add('keeps', keeps.pid, range(1n));
    a.add('snoops', snoops.pid, range(2n));
    for (const id of ['good', 'keeps', 'snoops']) a.onRequest(id, true);
    a.scan();
    const v = audit.recent.filter((r) => r.event === 'audit-violation');
    const by = (pid: number) => v.filter((r) => r.pid === pid).map((r) => r.finding);
    assert.deepEqual(by(good.pid), []);
    assert.deepEqual(by(keeps.pid), ['fd-kept']);
    assert.deepEqual(by(snoops.pid), ['mapping-outside-slice']);
    const rec = v.find((r) => r.pid === snoops.pid)!;
    assert.equal(rec.lease, 'snoops');
    assert.equal(rec.exe, process.execPath, 'the record names the executable');
    assert.equal(rec.action, 'report');
    a.scan();
    assert.equal(audit.recent.filter((r) => r.event === 'audit-violation').length, v.length, 'recorded once');
  } finally {
    a.close();
    for (const m of [good, keeps, snoops]) m.kill();
    await Promise.all([good.exited, keeps.exited, snoops.exited]);
  }
});

test('audit: within the hand-off grace the holder may still hold the fd; action revoke names the lease', async () => {
  const { a, audit, revoked } = auditor({ action: 'revoke', handoffGraceMs: 60_000 });
  const keeps = await mapPage(0n, ['--keep-fd']);
  try {
    a.add('l1', keeps.pid, range(0n));
    a.scan();
    assert.deepEqual(revoked, [], 'inside connect(): not yet a violation');
    a.onRequest('l1'); // a request pipelined before the client read the hand-off's reply
    a.scan();
    assert.deepEqual(revoked, [], 'a pipelined request does not end the hand-off');
    a.onRequest('l1', true); // DEVICE_GET_INFO after closing the fd: connect() has returned
    a.scan();
    assert.deepEqual(revoked, ['l1']);
    assert.equal(audit.recent.find((r) => r.event === 'audit-violation')?.finding, 'fd-kept');
  } finally {
    a.close();
    keeps.kill();
    await keeps.exited;
  }
});

test('audit: action kill SIGKILLs the violating process through its pidfd', async () => {
  const { a, audit } = auditor({ action: 'kill' });
  const snoops = await mapPage(PAGE * 7n);
  try {
    a.add('l1', snoops.pid, range(0n));
    a.onRequest('l1', true);
    a.scan();
    await snoops.exited;
    assert.equal(snoops.proc.signalCode, 'SIGKILL');
    assert.ok(audit.recent.some((r) => r.event === 'audit-kill' && r.pid === snoops.pid));
  } finally {
    a.close();
  }
});

test('release: the slice is free only when no process maps it; a forked child holds it until it exits', async () => {
  const { a } = auditor();
  const holder = await mapPage(0n, ['--fork']);
  assert.ok(holder.child, 'the mapper forked a child');
  try {
    a.add('l1', holder.pid, range(0n));
    // No scan before the holder dies: its child is re-parented before the audit ever saw it.
    holder.kill();
    await holder.exited;
    let freed = false;
    const released = a.whenUnmapped('l1', { forced: false, pollMs: 20 }).then(() => {
      freed = true;
    });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(freed, false, 'the forked child still maps the page');
    const violations = a.stats.violations;
    assert.equal(violations, 0, 'an inherited mapping of the slice is no violation');
    holder.killChild();
    await released;
  } finally {
    a.close();
    holder.killChild();
  }
});

test('revoke deadline: forced release kills every process still mapping the slice', async () => {
  const { a, audit } = auditor();
  const holder = await mapPage(0n, ['--fork']);
  try {
    a.add('l1', holder.pid, range(0n));
    a.onRequest('l1', true);
    await a.whenUnmapped('l1', { forced: true, pollMs: 20 });
    await holder.exited;
    const killed = audit.recent.filter((r) => r.event === 'audit-kill').map((r) => r.pid);
    assert.deepEqual(new Set(killed), new Set([holder.pid, holder.child]));
  } finally {
    a.close();
    holder.killChild();
  }
});

test('revoke deadline: killMappers kills at once whoever maps the slice (reclaim calls it before the hang-up)', async () => {
  const { a, audit } = auditor();
  const holder = await mapPage(0n, ['--fork']);
  try {
    a.add('l1', holder.pid, range(0n));
    a.onRequest('l1', true);
    a.killMappers('l1');
    await holder.exited;
    const killed = audit.recent.filter((r) => r.event === 'audit-kill').map((r) => r.pid);
    assert.deepEqual(new Set(killed), new Set([holder.pid, holder.child]));
    await a.whenUnmapped('l1', { forced: false, pollMs: 20 });
  } finally {
    a.close();
    holder.killChild();
  }
});

// A broker upgrade carries the audit (handover/format.ts, version 5): the new broker's auditor adopts the old
// one's entries, scans nothing until the commit, and takes the other broker holding the device fd for what it
// is. The guest test upgrades a daemon with ivshmem pages handed out (ivshmem-upgrade.test.ts).
test('upgrade: an adopted audit is held until the commit, knows the hand-offs, and lets the other broker hold the fd', async () => {
  const { a: before } = auditor();
  const holder = await mapPage(0n);
  const otherBroker = await mapPage(4n * PAGE, ['--keep-fd']); // holds the device fd, as the other broker does
  const { a: after, audit } = auditor();
  try {
    before.add('l1', holder.pid, range(0n));
    before.hold();
    assert.equal(before.scan(), null, 'held: no scan');
    const state = JSON.parse(JSON.stringify(before.handover()));
    after.adopt(state);
    after.hold(); // as the new broker is until the commit
    after.allowBroker(otherBroker.pid);
    assert.equal(after.scan(), null, 'held: no scan');
    after.unhold();
    assert.ok(after.has('l1'));
    assert.ok(after.scan(), 'scanning from the commit');
    assert.equal(after.stats.violations, 0, `no violation: ${JSON.stringify(audit.recent)}`);
    let freed = false;
    const released = after.whenUnmapped('l1', { forced: false, pollMs: 20 }).then(() => {
      freed = true;
    });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(freed, false, "the holder maps its page: the adopted entry's release is awaited");
    holder.kill();
    await released;
    // Once the other broker is gone, a process holding the fd is a violation again.
    otherBroker.kill();
    await otherBroker.exited;
    const keeper = await mapPage(5n * PAGE, ['--keep-fd']);
    after.scan();
    assert.ok(
      audit.recent.some(
        (r) => r.event === 'audit-violation' && r.pid === keeper.pid && r.finding === 'fd-passed',
      ),
      'a process holding the fd is reported',
    );
    keeper.kill();
  } finally {
    before.close();
    after.close();
    holder.kill();
    otherBroker.kill();
  }
});

// The other broker is left out of the scan by pid, and so held by pidfd (allowed-brokers.ts): once it is gone
// its pid is another process's to take. Before, it was left out until a scan found no process running under
// that pid, so a process given it within a scan period was never audited.
const pidfds = () => [...openFds().values()].filter((t) => t === 'anon_inode:[pidfd]').length;

test('upgrade: the other broker is held by a pidfd, dropped at its exit with no scan; a process holding the fd then is reported', async () => {
  // A long grace and no request: nothing but this test starts a scan (add() and onRequest() schedule them).
  const { a, audit } = auditor({ handoffGraceMs: 60_000 });
  const holder = await mapPage(0n);
  const otherBroker = await mapPage(4n * PAGE, ['--keep-fd']);
  let keeper: Mapper | null = null;
  try {
    a.add('l1', holder.pid, range(0n));
    const before = pidfds();
    a.allowBroker(otherBroker.pid);
    assert.equal(pidfds(), before + 1, 'the other broker is held by its pidfd');
    a.scan();
    assert.equal(a.stats.violations, 0, `it holds the fd by right: ${JSON.stringify(audit.recent)}`);
    const scans = a.stats.scans;
    otherBroker.kill();
    await until('the pidfd to be dropped at the exit', () => pidfds() === before);
    assert.equal(a.stats.scans, scans, 'dropped by the exit watch, with no scan');
    keeper = await mapPage(5n * PAGE, ['--keep-fd']);
    a.scan();
    assert.ok(
      audit.recent.some(
        (r) => r.event === 'audit-violation' && r.pid === keeper!.pid && r.finding === 'fd-passed',
      ),
    );
    a.close();
    a.close();
  } finally {
    a.close();
    for (const m of [holder, otherBroker, keeper]) if (m) m.kill();
    await Promise.all([holder.closed, otherBroker.closed, keeper?.closed]);
  }
});

/** Blocks this thread (and its event loop) for `ms`. */
const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** Polls `pred` with the event loop blocked: nothing asynchronous (a pidfd's exit watch) runs meanwhile. */
function waitSync(pred: () => boolean, ms: number): boolean {
  for (const end = Date.now() + ms; Date.now() < end; sleepSync(5)) if (pred()) return true;
  return pred();
}

const NS_LAST_PID = '/proc/sys/kernel/ns_last_pid';
const canSetPid = (() => {
  try {
    accessSync(NS_LAST_PID, constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();

// A real pid reuse, as root: ns_last_pid (the last pid allocated in this pid namespace) set to one less than
// the gone broker's, the next process made gets its pid (tried again when another process took it first). The
// broker is a re-parented grandchild, reaped by init, so all of it (its death, the reuse, the scan) happens with
// this event loop blocked: the pidfd's exit watch cannot have run, the scan's own check must see it gone.
test("upgrade: a process given the gone broker's pid is audited (the scan's pidfd check, before the exit watch runs)", async () => {
  assert.ok(canSetPid, `this test needs root: it writes ${NS_LAST_PID} to give a new process a chosen pid`);
  const { a, audit } = auditor();
  const holder = await mapPage(0n);
  const parent = await mapPage(4n * PAGE, ['--keep-fd', '--fork']); // its child holds the fd and maps
  const broker = parent.child!;
  parent.kill();
  await parent.exited;
  let reuser: ChildProcess | null = null;
  try {
    a.add('l1', holder.pid, range(0n));
    a.onRequest('l1', true);
    a.allowBroker(broker);
    a.scan();
    assert.equal(a.stats.violations, 0, `it holds the fd by right: ${JSON.stringify(audit.recent)}`);
    parent.killChild();
    assert.ok(
      waitSync(() => !existsSync(`/proc/${broker}`), 30_000),
      `init (pid 1) reaped the re-parented broker ${broker} within 30 s: its pid must be free to be reused`,
    );
    for (let i = 0; i < 50 && !reuser; i++) {
      writeFileSync(NS_LAST_PID, String(broker - 1));
      const p = spawn('sh', ['-c', 'exec sleep 60 3<>"$0"', file], { stdio: 'ignore' });
      children.push(p);
      if (p.pid === broker) reuser = p;
      else p.kill('SIGKILL');
    }
    assert.ok(reuser, `no process got pid ${broker} in 50 tries`);
    const holdsFd = () => {
      try {
        return readlinkSync(`/proc/${broker}/fd/3`) === file;
      } catch {
        return false;
      }
    };
    assert.ok(waitSync(holdsFd, 10_000), 'the new process opened the file');
    a.scan();
    assert.ok(
      audit.recent.some(
        (r) => r.event === 'audit-violation' && r.pid === broker && r.finding === 'fd-passed',
      ),
      `the new process with the gone broker's pid is reported: ${JSON.stringify(audit.recent)}`,
    );
  } finally {
    a.close();
    holder.kill();
    parent.killChild();
    reuser?.kill('SIGKILL');
    await Promise.all([holder.closed, parent.closed]); // the parent's pipe, held by its child until it is gone
  }
});
