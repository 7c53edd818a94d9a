// The bench rig's audit view: the records the case asked to keep (RigOptions.keepAudit), parsed and in order,
// whenever the case reads them; the sink itself only keeps the line (the broker's process is what the cpu-broker
// rows measure), and by default keeps none, as a real broker's sink keeps none.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startRig } from '../../bench/fixtures/rig.js';

test('rig.audit holds the audit records keepAudit takes, parsed, in order, read at any time', async () => {
  const rig = await startRig({
    simArgs: ['--queues', '1'],
    keepAudit: (line) => line.includes('"event":"start"') || line.includes('"event":"bench-'),
  });
  try {
    assert.equal(rig.audit[0]?.['event'], 'start');
    const before = rig.audit.length;
    rig.broker.audit.write({ event: 'bench-a', iova: 1n << 40n });
    rig.broker.audit.write({ event: 'other' });
    rig.broker.audit.write({ event: 'bench-b' });
    const after = rig.audit;
    assert.deepEqual(
      after.slice(before).map((r) => [r['event'], r['iova']]),
      [
        ['bench-a', String(1n << 40n)],
        ['bench-b', undefined],
      ],
    );
    rig.broker.audit.write({ event: 'bench-c' });
    assert.equal(rig.audit, after, 'the same array, grown');
    assert.deepEqual(
      rig.audit.slice(before).map((r) => r['event']),
      ['bench-a', 'bench-b', 'bench-c'],
    );
  } finally {
    await rig.close();
  }
});

test('without keepAudit the rig keeps no audit line', async () => {
  const rig = await startRig({ simArgs: ['--queues', '1'] });
  try {
    rig.broker.audit.write({ event: 'bench-a' });
    assert.deepEqual(rig.audit, [], 'neither the start record nor a later one');
  } finally {
    await rig.close();
  }
});
