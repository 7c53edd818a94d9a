// The SA-1 driver's queue pool (src/drivers/sa1/pools.ts) decides which queue a grant gets: the most recently
// prepared one first (the device holds its page's next slice fd, so the grant asks the device for none), then
// the lowest clean one (no reset at grant), then the lowest; never a quarantined one. Pure bookkeeping, checked
// here on its own; test/broker/prepared-slices.test.ts checks the same order through a broker and a device.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QueuePool } from '../../src/drivers/sa1/pools.js';

/** A pool of `n` queues all taken, then `reclaimed` given back in that order: clean, prepared where `held`. */
function poolWith(n: number, reclaimed: number[], held: Set<number>): QueuePool {
  const pool = new QueuePool();
  pool.fill(n);
  for (let i = 0; i < n; i++) pool.take();
  for (const q of reclaimed) {
    pool.markClean(q);
    if (held.has(q)) pool.markPrepared(q);
    pool.give(q);
  }
  return pool;
}

test('take(): the most recently prepared queue the device still holds, then the lowest clean, then the lowest', () => {
  const held = new Set([5, 2]);
  const pool = poolWith(8, [5, 6, 2, 3], held);
  pool.give(1); // free, never reset by this driver: not clean
  const holds = (q: number) => held.has(q);
  assert.equal(pool.take(holds), 2, 'prepared last');
  assert.equal(pool.take(holds), 5, 'prepared before it');
  assert.equal(pool.take(holds), 3, 'then the lowest clean');
  assert.equal(pool.take(holds), 6);
  assert.equal(pool.take(holds), 1, 'then the lowest');
  assert.equal(pool.take(holds), undefined);
});

test('take(): a prepared queue the device no longer holds is only clean; a quarantined one is never taken', () => {
  const pool = poolWith(4, [3, 1, 2], new Set([3, 1, 2]));
  pool.quarantine(2);
  const holds = (q: number) => q !== 1; // the device dropped queue 1's fd (a revoke over it, say)
  assert.equal(pool.take(holds), 3, 'the prepared one it holds');
  assert.equal(pool.take(holds), 1, 'queue 1 as a clean queue');
  assert.equal(pool.take(holds), undefined, 'queue 2 is quarantined');
});

test('take(): a queue prepared but not given back yet stays first in line for when it is', () => {
  // A reclaim marks its queue prepared before it gives it back; a grant in between must not lose the mark.
  const pool = poolWith(4, [0], new Set());
  pool.markClean(3);
  pool.markPrepared(3); // queue 3's reclaim: prepared, not yet given back
  assert.equal(
    pool.take(() => true),
    0,
    'queue 3 is not free yet: the clean queue 0',
  );
  pool.give(3);
  pool.markClean(1);
  pool.give(1);
  assert.equal(
    pool.take(() => true),
    3,
    'queue 3, prepared, before the lower clean queue 1',
  );
});
