// The [audit] keys of audited slices (docs/AUDITED-SLICES.md): defaults, and a bad value named by its field.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configFromObject } from '../../src/broker/config.js';

test('audited slices default to revoke, with a kill at the deadline', () => {
  const c = configFromObject({});
  assert.deepEqual(c.directAudit, {
    action: 'revoke',
    periodMs: 1000,
    handoffGraceMs: 2000,
    deadlineAction: 'kill',
  });
});

test('[audit] action, period_ms, handoff_grace_ms and deadline_action are read', () => {
  const c = configFromObject({
    audit: { action: 'kill', period_ms: 250, handoff_grace_ms: 0, deadline_action: 'report' },
  });
  assert.deepEqual(c.directAudit, {
    action: 'kill',
    periodMs: 250,
    handoffGraceMs: 0,
    deadlineAction: 'report',
  });
});

test('a bad [audit] value is refused naming the field', () => {
  assert.throws(
    () => configFromObject({ audit: { action: 'ignore' } }),
    /audit\.action.*report.*revoke.*kill/,
  );
  assert.throws(() => configFromObject({ audit: { deadline_action: 'revoke' } }), /audit\.deadline_action/);
  assert.throws(() => configFromObject({ audit: { period_ms: 1 } }), /period_ms/);
  assert.throws(() => configFromObject({ audit: { grace: 1 } }), /grace/);
});
