// A reload (SIGHUP, which an upgrade does not hold) while an upgrade is in progress: its revokes could land
// after the state went to the new broker, which would then hold the lease as active with no deadline while its
// client had been told it is revoked. Refused now (EBUSY, audited and logged), changing nothing; the new broker
// reads the config file anew, and a reload after the upgrade applies it.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { trackFdLeaks } from '../helpers/fds.js';
import { until } from '../interop/helpers/peers.js';
import { UpgradeRig } from './rig.js';

after(trackFdLeaks());

const uid = process.getuid!();
const policy = (max: number) =>
  `[policy]\non_reload = "revoke"\non_reload_deadline_ms = 60000\n[[policy.rule]]\nuid = ${uid}\nmax_leases = ${max}\n`;

test('SIGHUP while an upgrade is in progress: the reload is refused and changes nothing; the leases travel as they are', {
  timeout: 180_000,
}, async () => {
  // The new broker never answers: the upgrade is in progress until its deadline, then rolls back.
  const rig = await UpgradeRig.start({ DEVLEASE_TEST_UPGRADE_MISBEHAVE: 'hang' }, { config: policy(4) });
  try {
    await rig.addClient();
    using broker = await rig.brokerPidfd(); // not its pid: see helpers/pidfd.ts
    writeFileSync(rig.configFile!, policy(0)); // would revoke every lease
    const upgrading = rig.request({ op: 'upgrade', deadlineMs: 6000 }, 60_000).catch((e: Error) => e);
    await until('the upgrade to start', () => rig.events().some((e) => e.event === 'upgrade-start'), 30_000);
    broker.sendSignal('SIGHUP');
    await until(
      'the reload to be refused',
      () => rig.events().some((e) => e.event === 'reload-refused' && /upgrade is in progress/.test(e.error)),
      30_000,
    );
    const err = await upgrading;
    assert.match(String((err as Error).message), /upgrade rolled back/);
    assert.ok(
      !rig.events().some((e) => e.event === 'reload' || e.event === 'revoke'),
      'nothing was reloaded',
    );
    const [lease] = (await rig.request({ op: 'leases' })) as { id: string; state: string }[];
    assert.equal(lease?.state, 'active');
    // After the upgrade, a reload applies.
    const out = (await rig.request({ op: 'reload' })) as { refused: { lease: string; action: string }[] };
    assert.deepEqual(
      out.refused.map((r) => [r.lease, r.action]),
      [[lease!.id, 'revoked']],
    );
  } finally {
    await rig.close();
  }
});
