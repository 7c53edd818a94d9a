// The audit log's own contract, which the admin API (`recent`), the log file and the metrics rely on: each
// record is one JSON line with the time first, bigints as decimal strings and `decidedBy` on grants and
// denials only; `recent` holds the last AUDIT_RECENT records, oldest first, as objects. And its bounds:
// repeated denials collapsed into a count, long `exe` and `reason` strings cut.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AUDIT_RECENT, AuditLog, type AuditRecord, TEXT_CAPS } from '../../src/broker/audit.js';
import { until } from '../helpers/broker-rig.js';

test('a record is one JSON line: time first, bigints as strings, decidedBy on grants and denials only', () => {
  const lines: string[] = [];
  const seen: AuditRecord[] = [];
  const log = new AuditLog(null, (l) => lines.push(l));
  log.subscribe((r) => seen.push(r));
  log.decidedBy = { config: 'abc' };
  log.write({ event: 'grant', lease: 'queue-1', window: { base: 1n << 32n, size: 4096n }, ms: 1.5 });
  log.write({ event: 'released', lease: 'queue-1', problems: [] });
  log.write({ event: 'deny', reason: 'no' });
  const [grant, released, deny] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(Object.keys(grant!), ['time', 'event', 'lease', 'window', 'ms', 'decidedBy']);
  assert.ok(!Number.isNaN(Date.parse(grant!.time as string)));
  assert.deepEqual(grant!.window, { base: '4294967296', size: '4096' });
  assert.deepEqual(grant!.decidedBy, { config: 'abc' });
  assert.equal('decidedBy' in released!, false);
  assert.deepEqual(deny!.decidedBy, { config: 'abc' });
  // Listeners and `recent` get the record itself (bigints as bigints), with a snapshot of decidedBy.
  assert.deepEqual(seen[0]!.window, { base: 1n << 32n, size: 4096n });
  log.decidedBy = { config: 'def' };
  assert.deepEqual(log.recent[0]!.decidedBy, { config: 'abc' });
  assert.equal(seen.length, 3);
});

test('recent keeps the last AUDIT_RECENT records, oldest first', () => {
  const log = new AuditLog(null);
  const n = AUDIT_RECENT + 250;
  for (let i = 0; i < n; i++) {
    log.write({ event: 'reclaim', i });
    assert.equal(log.recent.length, Math.min(i + 1, AUDIT_RECENT));
  }
  assert.deepEqual(
    log.recent.map((r) => r.i),
    Array.from({ length: AUDIT_RECENT }, (_, k) => n - AUDIT_RECENT + k),
  );
});

test('write() never throws: a file that refuses the line and an observer that throws are counted and reported; the others still get the record', () => {
  const lines: string[] = [];
  const reported: string[] = [];
  const log = new AuditLog('/dev/full', (l) => lines.push(l)); // every append fails with ENOSPC
  log.onError = (what, err) => reported.push(`${what}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  const seen: AuditRecord[] = [];
  log.subscribe(() => {
    throw new Error('observer bug');
  });
  log.subscribe((r) => seen.push(r));
  log.write({ event: 'reclaim', lease: 'queue-1' });
  assert.equal(lines.length, 1, 'the sink got the line');
  assert.equal(seen.length, 1, 'the observer after the throwing one got the record');
  assert.equal(log.recent.length, 1);
  assert.equal(log.writeErrors, 2);
  assert.deepEqual(reported, [
    'cannot append to /dev/full: ENOSPC',
    'an audit observer threw: Error: observer bug',
  ]);
});

/** A `suppressed` record without its times, for comparison. */
const count = ({ time: _t, since: _s, ...r }: Record<string, unknown>) => r;
const byKey = (a: Record<string, unknown>, b: Record<string, unknown>) =>
  `${a.of} ${a.uid} ${a.code}`.localeCompare(`${b.of} ${b.uid} ${b.code}`);

test('repeated denials: per event, uid and code, a burst a window is written and the rest counted at its end; observers get each', async () => {
  const lines: Record<string, unknown>[] = [];
  const seen: AuditRecord[] = [];
  const log = new AuditLog(null, (l) => lines.push(JSON.parse(l)), { burst: 3, windowMs: 50, keys: 256 });
  log.subscribe((r) => seen.push(r));
  // Written in one go: no window can end in between.
  for (let i = 0; i < 10; i++) log.write({ event: 'deny', uid: 1000, code: 'EACCES', reason: `r${i}` });
  for (let i = 0; i < 2; i++) log.write({ event: 'deny', uid: 1000, code: 'EBUSY', reason: 'draining' });
  for (let i = 0; i < 4; i++) log.write({ event: 'deny-map', uid: 1000, reason: `m${i}` });
  for (let i = 0; i < 5; i++) log.write({ event: 'deny', uid: 1001, code: 'EACCES', reason: 'other' });
  for (let i = 0; i < 5; i++) log.write({ event: 'grant', uid: 1000 }); // not a denial: never collapsed
  assert.equal(seen.length, 26, 'the observers (the metrics) get every record');
  assert.deepEqual(
    lines.map((l) => `${l.event} ${l.uid} ${l.code ?? '-'} ${l.reason ?? '-'}`),
    [
      ...['r0', 'r1', 'r2'].map((r) => `deny 1000 EACCES ${r}`),
      ...['draining', 'draining'].map((r) => `deny 1000 EBUSY ${r}`),
      ...['m0', 'm1', 'm2'].map((r) => `deny-map 1000 - ${r}`),
      ...['other', 'other', 'other'].map((r) => `deny 1001 EACCES ${r}`),
      ...Array(5).fill('grant 1000 - -'),
    ],
  );
  await until('the windows to end', () => lines.length === 16 + 3);
  const counts = lines.slice(16);
  assert.deepEqual(counts.map(count).sort(byKey), [
    { event: 'suppressed', of: 'deny', uid: 1000, code: 'EACCES', suppressed: 7, lastReason: 'r9' },
    { event: 'suppressed', of: 'deny', uid: 1001, code: 'EACCES', suppressed: 2, lastReason: 'other' },
    { event: 'suppressed', of: 'deny-map', uid: 1000, code: null, suppressed: 1, lastReason: 'm3' },
  ]);
  for (const c of counts) assert.ok((c.since as string) <= (c.time as string));
  assert.deepEqual(
    log.recent.map((r) => r.event),
    lines.map((l) => l.event),
    'recent: what was written',
  );
  // A window ended: the next denial of the key starts another, and is written.
  log.write({ event: 'deny', uid: 1000, code: 'EACCES', reason: 'again' });
  assert.equal(lines.at(-1)!.reason, 'again');
  log.close();
  assert.equal(lines.length, 20, 'nothing was suppressed in that window: no count at close');
});

test('past its key limit denials share a key per event, and close() writes the counts of open windows', () => {
  const lines: Record<string, unknown>[] = [];
  const log = new AuditLog(null, (l) => lines.push(JSON.parse(l)), { burst: 1, windowMs: 600_000, keys: 2 });
  for (let uid = 1; uid <= 5; uid++) log.write({ event: 'deny', uid, code: 'EACCES', reason: `u${uid}` });
  log.write({ event: 'deny', uid: 1, code: 'EACCES', reason: 'u1 again' });
  log.write({ event: 'deny-map', uid: 6, reason: 'm6' });
  log.write({ event: 'deny-map', uid: 7, reason: 'm7' });
  // uid 1 and 2 have keys of their own; 3 is the first of the shared key's burst, 6 of deny-map's.
  assert.deepEqual(
    lines.map((l) => l.uid),
    [1, 2, 3, 6],
  );
  log.close();
  assert.deepEqual(lines.slice(4).map(count).sort(byKey), [
    { event: 'suppressed', of: 'deny', uid: 1, code: 'EACCES', suppressed: 1, lastReason: 'u1 again' },
    { event: 'suppressed', of: 'deny', uid: null, code: null, suppressed: 2, lastReason: 'u5' },
    { event: 'suppressed', of: 'deny-map', uid: null, code: null, suppressed: 1, lastReason: 'm7' },
  ]);
});

test('a long exe or reason is cut, saying how long it was; other fields and short ones are left as they are', () => {
  const lines: Record<string, unknown>[] = [];
  const log = new AuditLog(null, (l) => lines.push(JSON.parse(l)));
  // A client may run from any path up to PATH_MAX (4 KiB): the record carried it whole, ~4 KB a denial.
  const exe = `/${'d/'.repeat(2000)}client`;
  const reason = 'r'.repeat(2000);
  const other = 'x'.repeat(1000);
  log.write({ event: 'deny', exe, reason, other });
  log.write({ event: 'grant', exe: '/usr/bin/node', reason: 'short' });
  // Not cut inside a surrogate pair (a lone half would be written as an escape).
  log.write({ event: 'deny', exe: `${'a'.repeat(TEXT_CAPS.exe! - 1)}😀😀` });
  assert.deepEqual(TEXT_CAPS, { exe: 256, reason: 512 });
  assert.equal(lines[0]!.exe, `${exe.slice(0, 256)} [truncated: ${exe.length} chars]`);
  assert.equal(lines[0]!.reason, `${reason.slice(0, 512)} [truncated: 2000 chars]`);
  assert.equal(lines[0]!.other, other);
  assert.equal(lines[1]!.exe, '/usr/bin/node');
  assert.equal(lines[1]!.reason, 'short');
  assert.equal(lines[2]!.exe, `${'a'.repeat(255)} [truncated: 259 chars]`);
  log.close();
});
