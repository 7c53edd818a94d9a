// `upgrade` over the admin socket, with a `devlease daemon`:
//  - an admin-group member (not root, not the broker's user) upgrades to the
//    configured binary and config, and is refused one it names (EPERM): the
//    new broker runs it as the broker's user;
//  - a second `upgrade` while one is in progress is refused (EBUSY) without
//    taking the first one's place as the request to answer: the old broker
//    killed after sending the whole state, the new one answers the first.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { after, test } from 'node:test';
import { DEVLEASE_BIN } from '../../src/util/processes.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { alive, stopped, UpgradeRig } from './rig.js';

after(trackFdLeaks());

const MEMBER = { uid: 65534, gid: 65534 };

const cliAs = (as: { uid: number; gid: number }, admin: string, ...args: string[]) =>
  new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [DEVLEASE_BIN, ...args, '--admin', admin], as, (err, stdout, stderr) =>
      resolve({ status: err ? Number(err.code) : 0, stdout, stderr }),
    );
  });

test('an admin-group member upgrades to the configured binary, and may not name one', {
  timeout: 180_000,
}, async () => {
  // mode 0660 (432), group 65534: the member connects as a group member.
  const rig = await UpgradeRig.start({}, { config: `[admin]\nmode = 432\ngroup = ${MEMBER.gid}\n` });
  try {
    chmodSync(rig.dir, 0o755);
    const old = await rig.brokerPid();
    const refused = await cliAs(MEMBER, rig.admin, 'upgrade', '--binary', DEVLEASE_BIN);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /"binary" is taken only from root or the broker's user/);
    const r = await cliAs(MEMBER, rig.admin, 'upgrade', '--json');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).upgraded, true);
    const status = await rig.request({ op: 'status' });
    assert.notEqual(status.pid, old);
    assert.equal(status.upgrades, 1);
    await until('the old broker to exit', () => !alive(old), 30_000);
  } finally {
    await rig.close();
  }
});

test('a second upgrade is refused (EBUSY) and the first is still the one answered', {
  timeout: 180_000,
}, async () => {
  const rig = await UpgradeRig.start({ DEVLEASE_TEST_UPGRADE_OLD_STOP: 'transferred' });
  try {
    const oldPid = rig.daemon.pid!;
    const first = rig.request({ op: 'upgrade', deadlineMs: 60_000 }, 90_000).then(
      (r) => ({ ok: true as const, r }),
      (err: Error) => ({ ok: false as const, err }),
    );
    const second = await rig.request({ op: 'upgrade' }).catch((e: Error & { code?: string }) => e);
    assert.ok(second instanceof Error, 'the second upgrade was refused');
    assert.equal((second as { code?: string }).code, 'EBUSY');
    // The old broker stops once the whole state is sent; killed there, the new broker owns everything and
    // answers the request that asked for the upgrade.
    await until('the old broker to stop after the transfer', () => stopped(oldPid), 60_000);
    const newPid = rig.events().find((e) => e.event === 'upgrade-start')?.pid as number;
    const exited = new Promise((r) => rig.daemon.once('exit', r));
    rig.daemon.kill('SIGKILL'); // oldPid is this child's: its handle, never the pid
    await exited;
    const answer = await first;
    assert.ok(answer.ok, `the first upgrade request is answered: ${answer.ok ? '' : answer.err.message}`);
    assert.equal(answer.r.upgraded, true);
    assert.equal(answer.r.pid, newPid);
  } finally {
    await rig.close();
  }
});
