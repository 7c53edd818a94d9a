// The count both connection bounds share (src/util/per-uid-count.ts: the lease sockets' connections before
// VERSION, util/admission.ts; the admin socket's, admin-limits.ts): per uid first, then in all; a forced one counted
// past both; a release that comes twice (a connection closed after its deadline closed it) frees one place.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PerUidCount } from '../../src/util/per-uid-count.js';

test('per uid first, then in all; forced past both; each release frees one place, once', () => {
  const c = new PerUidCount();
  const a1 = c.take(1000, 2, 3);
  const a2 = c.take(1000, 2, 3);
  assert.ok(a1.ok && a2.ok);
  assert.deepEqual(c.take(1000, 2, 3), { ok: false, limit: 'uid', held: 2 });
  const b1 = c.take(1001, 2, 3);
  assert.ok(b1.ok);
  // Both limits reached: the uid's is named first, as the refusal messages say.
  assert.deepEqual(c.take(1000, 2, 3), { ok: false, limit: 'uid', held: 2 });
  assert.deepEqual(c.take(1002, 2, 3), { ok: false, limit: 'total', held: 3 });
  const forced = c.take(1000, 2, 3, true);
  assert.ok(forced.ok, 'a handed-over connection is counted whatever the counts');
  assert.deepEqual([c.count(), c.count(1000), c.count(1001), c.count(1002)], [4, 3, 1, 0]);
  forced.release();
  a1.release();
  a1.release();
  assert.deepEqual(
    [c.count(), c.count(1000)],
    [2, 1],
    'a second release of one connection frees nothing more',
  );
  assert.ok(c.take(1000, 2, 3).ok);
  assert.deepEqual(c.take(1000, 2, 3), { ok: false, limit: 'uid', held: 2 });
  b1.release();
  assert.equal(c.count(1001), 0);
});
