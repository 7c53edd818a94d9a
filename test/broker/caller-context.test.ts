// The caller context policy and audit see: pid, uid, gid from SO_PEERCRED, exe and the first cgroup line
// read from /proc at connect time (one open and read for the cgroup, issue 16's sixth pass); these tests hold
// it to what node:fs reads from the same files, for a live process, a gone one and an unknown peer.
import assert from 'node:assert/strict';
import { readFileSync, readlinkSync } from 'node:fs';
import { after, test } from 'node:test';
import type { CallerContext } from '../../src/broker/policy.js';
import { readCallerContext } from '../../src/broker/policy.js';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** What the context was before: node:fs reads of the same /proc files. */
function viaFs(pid: number): { exe: string | null; cgroup: string | null } {
  let exe: string | null = null;
  let cgroup: string | null = null;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {}
  try {
    cgroup = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')[0] ?? null;
  } catch {}
  return { exe, cgroup };
}

test('readCallerContext reads exe and the first cgroup line as node:fs does; nulls for a gone or unknown pid', () => {
  const self = readCallerContext(process.pid, 1, 2);
  assert.deepEqual(self, { pid: process.pid, uid: 1, gid: 2, ...viaFs(process.pid) });
  assert.equal(self.exe, process.execPath);
  assert.ok(self.cgroup !== null && self.cgroup.length > 0, 'this process has a cgroup line');
  // pid_max is at most 2^22: no such process. pid 0 is the unknown identity of a non-unix peer.
  assert.deepEqual(readCallerContext(2 ** 22 + 1, 0, 0), {
    pid: 2 ** 22 + 1,
    uid: 0,
    gid: 0,
    exe: null,
    cgroup: null,
  });
  assert.deepEqual(readCallerContext(0, -1, -1), { pid: 0, uid: -1, gid: -1, exe: null, cgroup: null });
});

test("a policy module's lease hook sees the connecting process's own context; the audit names its exe", async () => {
  const seen: CallerContext[] = [];
  const rig = await startRig({
    policyModule: {
      lease(ctx) {
        seen.push({ ...ctx });
        return { allow: true };
      },
    },
  });
  const c = await ClientProc.spawn();
  try {
    await c.call('connect', { socket: rig.socket });
    assert.equal(seen.length, 1);
    const uid = process.getuid!();
    const gid = process.getgid!();
    assert.deepEqual(seen[0], { pid: c.pid, uid, gid, ...viaFs(c.pid) });
    const grant = rig.audit.find((e) => e.event === 'grant');
    assert.ok(grant, 'the grant is audited');
    assert.equal(grant.pid, c.pid);
    assert.equal(grant.exe, readlinkSync(`/proc/${c.pid}/exe`));
  } finally {
    await c.exit();
    await rig.close();
  }
});
