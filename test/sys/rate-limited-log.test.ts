// The rate-limited log the broker writes device refusals with (and the vfio-user
// server its lost-fds refusals, in its own words): a burst of
// lines per key per interval, then a "suppressed K" count, per key, bounded
// in the keys it tracks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OVERFLOW_KEY, RateLimitedLog } from '../../src/sys/rate-limited-log.js';
import { until } from '../helpers/broker-rig.js';

function clocked(opts: { burst: number; intervalMs: number; maxKeys?: number }) {
  const lines: string[] = [];
  let t = 1_000_000;
  const log = new RateLimitedLog((l) => lines.push(l), { ...opts, now: () => t });
  return {
    lines,
    log,
    advance(ms: number) {
      t += ms;
    },
  };
}

test('at most `burst` lines per key per interval; the next interval starts with the suppressed count', () => {
  const c = clocked({ burst: 2, intervalMs: 1000 });
  for (let i = 0; i < 5; i++) c.log.log('a', `a${i}`);
  c.log.log('b', 'b0');
  assert.deepEqual(c.lines, ['a0', 'a1', 'b0'], 'key b has its own budget');
  c.advance(999);
  assert.equal(c.log.log('a', 'a5'), false, 'still the same interval');
  c.advance(1);
  assert.equal(c.log.log('a', 'a6'), true);
  assert.deepEqual(c.lines.slice(3), ['a: suppressed 4 more line(s) in the last 1.0 s', 'a6']);
  c.log.flush();
  assert.equal(c.lines.length, 5, 'nothing suppressed since: flush writes nothing');
});

test('`summary` words the count line (fds-lost.ts: "N more request(s) refused")', () => {
  const lines: string[] = [];
  let t = 0;
  const log = new RateLimitedLog((l) => lines.push(l), {
    burst: 1,
    intervalMs: 1000,
    now: () => t,
    summary: (key, n, secs) => `${key}: ${n} more in ${secs} s`,
  });
  for (const l of ['a', 'b', 'c']) log.log('k', l);
  t += 1500;
  log.log('k', 'd');
  assert.deepEqual(lines, ['a', 'k: 2 more in 1.5 s', 'd']);
  log.flush();
});

test('the suppressed count is written when the interval ends even if no further line comes', async () => {
  const lines: string[] = [];
  const log = new RateLimitedLog((l) => lines.push(l), { burst: 1, intervalMs: 50 });
  log.log('k', 'first');
  log.log('k', 'second');
  log.log('k', 'third');
  assert.deepEqual(lines, ['first']);
  await until('the summary', () => lines.length === 2, 2000);
  assert.match(lines[1]!, /^k: suppressed 2 more line\(s\) in the last 0\.\d s$/);
  assert.equal(log.log('k', 'fourth'), true, 'a fresh interval after the summary');
  log.flush();
});

test('past maxKeys, new keys share one overflow budget; expired keys are let go first', () => {
  const c = clocked({ burst: 1, intervalMs: 1000, maxKeys: 2 });
  c.log.log('a', 'a');
  c.log.log('b', 'b');
  c.log.log('c', 'c'); // a and b still live: c counts under the overflow key
  c.log.log('d', 'd');
  assert.deepEqual(c.lines, ['a', 'b', 'c']);
  c.log.flush();
  assert.deepEqual(c.lines.slice(3), [`${OVERFLOW_KEY}: suppressed 1 more line(s) in the last 0.0 s`]);
  c.log.log('a', 'a again');
  c.advance(1000);
  c.log.log('e', 'e'); // a expired: swept, e gets its own key
  c.log.log('f', 'f');
  c.log.log('f', 'f again');
  c.log.flush();
  assert.deepEqual(c.lines.slice(4), ['a again', 'e', 'f', 'f: suppressed 1 more line(s) in the last 0.0 s']);
});

test('bad limits are refused by name', () => {
  assert.throws(() => new RateLimitedLog(() => {}, { burst: 0 }), /burst must be a positive integer, got 0/);
  assert.throws(
    () => new RateLimitedLog(() => {}, { intervalMs: 1.5 }),
    /intervalMs must be a positive integer/,
  );
});
