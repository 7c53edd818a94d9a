// Refused clients cost the audit log a bounded amount: the lease socket is 0666 by default, so any local user
// can loop refused connections, or, holding a lease, DMA_MAPs past its mapping limit. Each used to write a
// record (~700 KiB/s from 8 loops). Now the first few of a window are written and the rest counted, in one
// `suppressed` record; the metrics still count every denial.
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { connect } from '../../src/index.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

const uid = process.getuid!();
/**
 * Ten denials of a key written per window, as the broker's default; a window long enough that each burst below
 * is one window whatever the machine's speed (its count is written at the broker's close).
 */
const DENIALS = { burst: 10, windowMs: 600_000, keys: 256 };

function get(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: '/metrics', agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error('metrics: timed out')));
    req.on('error', reject);
  });
}

test('a burst of refused connections writes the first 10 denials and one count of the rest; the metrics count all', async () => {
  const rig = await startRig({
    config: { metrics: { listen: join('/tmp', `devlease-audit-denials-${process.pid}.sock`) } },
    auditDenials: DENIALS,
  });
  const N = 50;
  try {
    rig.broker.leases.draining = true;
    for (let i = 0; i < N; i++) {
      const err = await connect({ socket: rig.socket }).catch((e: unknown) => e);
      assert.equal((err as { code?: string }).code, 'EBUSY', `connection ${i} is refused`);
    }
    const m = await get(rig.broker.metricsEndpoint!);
    assert.match(m, /^devlease_denials_total\{[^}]*reason="draining"[^}]*\} 50$/m, 'every denial is counted');
    assert.equal(rig.audit.filter((e) => e.event === 'deny').length, DENIALS.burst, 'written in full');
  } finally {
    await rig.close(); // writes the window's count
  }
  assert.equal(rig.audit.filter((e) => e.event === 'deny').length, DENIALS.burst);
  const counts = rig.audit.filter((e) => e.event === 'suppressed');
  assert.equal(counts.length, 1, 'one record of the suppressed');
  assert.deepEqual(
    { ...counts[0], time: undefined, since: undefined },
    {
      time: undefined,
      event: 'suppressed',
      of: 'deny',
      uid,
      code: 'EBUSY',
      suppressed: N - DENIALS.burst,
      since: undefined,
      lastReason: 'the broker is draining: no new leases',
    },
  );
  assert.ok(counts[0]!.since <= counts[0]!.time, 'since: when the window began');
});

test('DMA_MAPs past the mapping limit write the first 10 deny-map records and one count of the rest', async () => {
  const rig = await startRig({
    config: { policy: { rule: [{ uid, max_mappings: 1 }] } },
    auditDenials: DENIALS,
  });
  const N = 30;
  try {
    const lease = await connect({ socket: rig.socket });
    try {
      await lease.dma.alloc(4096);
      for (let i = 0; i < N; i++) {
        const err = await lease.dma.alloc(4096).catch((e: unknown) => e);
        assert.equal((err as { code?: string }).code, 'EACCES', `map ${i} is refused`);
      }
    } finally {
      lease.close();
    }
  } finally {
    await rig.close();
  }
  assert.equal(rig.audit.filter((e) => e.event === 'deny-map').length, DENIALS.burst);
  const counts = rig.audit.filter((e) => e.event === 'suppressed');
  assert.equal(counts.length, 1);
  assert.equal(counts[0]!.of, 'deny-map');
  assert.equal(counts[0]!.uid, uid);
  assert.equal(counts[0]!.suppressed, N - DENIALS.burst);
  assert.match(counts[0]!.lastReason, /mapping limit reached: 1 of 1/);
});
