// A revoke's deadline in a broker out of descriptors: killMappers (called by reclaim before the hang-up) runs a
// /proc scan, which fails at EMFILE. It threw out of the reclaim, which then ended half-done. Now the failure is
// logged and recorded, nothing is released while the scans fail, and the first scan that succeeds kills the
// processes still mapping the slice. And a scan that could read /proc but not the processes in it (each open
// at EMFILE) would have counted them "unreadable" and seen no mapping; that one fails whole now too (not
// reproduced here: readdirSync closes its fd before the first process is read, so the two cannot be split).
// Real exhaustion: this process's descriptors filled with /dev/null up to RLIMIT_NOFILE.
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { AuditLog } from '../../src/broker/audit.js';
import { SliceAuditor } from '../../src/broker/audit-scan/auditor.js';
import { identityOfFd } from '../../src/broker/audit-scan/proc-scan.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { closeMappers, startMapper } from '../helpers/mapper.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(async () => {
  await closeMappers();
  await leakCheck();
});

/** Open /dev/null until EMFILE, then close `spare` of them again: the descriptors left to the code under test. */
function exhaustFds(spare: number): number[] {
  const fds: number[] = [];
  for (;;) {
    try {
      fds.push(openSync('/dev/null', 'r'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EMFILE') break;
      throw err;
    }
  }
  for (const fd of fds.splice(fds.length - spare)) closeSync(fd);
  return fds;
}

test('killMappers at EMFILE: no throw, recorded, nothing released meanwhile; the next good scan kills the mappers', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-audit-emfile-'));
  const file = join(dir, 'bar');
  const fileFd = openSync(file, 'w+');
  ftruncateSync(fileFd, 4 * 4096);
  // Its forked child is held by pidfd (the helper's), not signalled by its pid.
  const m = await startMapper(file, 0, 4096, ['--fork']);
  const { pid, child, proc, exited } = m;
  const logs: string[] = [];
  const audit = new AuditLog(null);
  const a = new SliceAuditor(
    identityOfFd(fileFd),
    { action: 'report', periodMs: 60_000, handoffGraceMs: 0, deadlineAction: 'kill' },
    { audit, revoke: () => {}, log: (l) => logs.push(l) },
  );
  let released = false;
  let fillers: number[] = [];
  try {
    a.add('l1', pid, [{ start: 0n, end: 4096n }]);
    a.onRequest('l1', true);
    fillers = exhaustFds(0);
    assert.doesNotThrow(() => a.killMappers('l1'));
    const failed = audit.recent.filter((r) => r.event === 'audit-scan-failed');
    assert.equal(failed.length, 1, JSON.stringify(audit.recent));
    assert.equal(failed[0]!.lease, 'l1');
    assert.equal(failed[0]!.code, 'EMFILE');
    const wait = a.whenUnmapped('l1', { forced: false, pollMs: 20 }).then(() => {
      released = true;
    });
    // The release wait's scans fail too (still at EMFILE): the slice is not let go of, its mappers live. They
    // are paced (one a second at most) and logged once for the streak; status counts them.
    const before = logs.length;
    const failures = a.stats.scanFailures;
    await until('two more scans to fail', () => a.stats.scanFailures >= failures + 2, 30_000);
    assert.match(String(a.stats.lastScanError), /^EMFILE: /);
    const logged = logs.slice(before);
    assert.equal(logged.length, 1, `one log line for the streak: ${logged.join('\n')}`);
    assert.match(logged[0]!, /scan of \/proc failed \(\d+ so far\): .*EMFILE/);
    assert.equal(released, false, 'the slice is not released while no scan can see who maps it');
    assert.equal(proc.exitCode ?? proc.signalCode, null, 'no kill went out on a scan that failed');
    assert.equal(audit.recent.filter((r) => r.event === 'audit-kill').length, 0);
    for (const fd of fillers.splice(0)) closeSync(fd);
    await within(wait, 'the release once the scans succeed again', 30_000);
    assert.equal(a.stats.lastScanError, null, 'cleared by the scan that succeeded');
    await within(exited, 'the holder to be killed', 10_000);
    const killed = audit.recent.filter((r) => r.event === 'audit-kill').map((r) => r.pid);
    assert.deepEqual(
      new Set(killed),
      new Set([pid, child]),
      'the holder and its forked child, both mapping it',
    );
  } finally {
    for (const fd of fillers) closeSync(fd);
    a.close();
    await m.close();
    closeSync(fileFd);
    rmSync(dir, { recursive: true, force: true });
  }
});
