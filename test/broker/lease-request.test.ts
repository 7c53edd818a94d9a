// The lease request rides in the client's VERSION (devlease.request) and is the
// client's to shape: ill-typed members are refused at the edge with EINVAL and
// a reason naming the field — never an exception inside the broker (EIO) —
// and the broker keeps leasing to a well-formed request afterwards.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { readLeaseRequest } from '../../src/broker/lease-request.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { type Rig, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
let rig: Rig;
before(async () => {
  rig = await startRig();
});
after(async () => {
  await rig?.close();
  await leakCheck();
});

/** Ill-typed requests and the field each refusal must name. */
const HOSTILE: [unknown, RegExp][] = [
  // {toString: 1}: String() of it throws "Cannot convert object to primitive value".
  [{ kind: { toString: 1 } }, /devlease\.request\.kind must be a string, got an object/],
  [{ kind: { valueOf: 'x', toString: null } }, /devlease\.request\.kind must be a string/],
  [{ kind: ['queue'] }, /devlease\.request\.kind must be a string, got an array/],
  [{ kind: 7 }, /devlease\.request\.kind must be a string, got number 7/],
  [{ kind: null }, /devlease\.request\.kind must be a string, got null/],
  [{ kind: 'dma' }, /devlease\.request\.kind is the string "dma": this socket leases 'queue'/],
  [{ devmemGranules: { toString: 1 } }, /devlease\.request\.devmemGranules must be an integer/],
  [{ devmemGranules: -1 }, /devlease\.request\.devmemGranules must be an integer from 0 to 65536/],
  [{ devmemGranules: 1.5 }, /devlease\.request\.devmemGranules .*got number 1\.5/],
  [{ devmemGranules: '2' }, /devlease\.request\.devmemGranules .*got the string "2"/],
  [{ devmemGranules: 1e300 }, /devlease\.request\.devmemGranules/],
  [[1, 2], /devlease\.request must be a JSON object, got an array/],
  ['queue', /devlease\.request must be a JSON object, got the string "queue"/],
  [null, /devlease\.request must be a JSON object, got null/],
];

test('ill-typed lease requests are refused with EINVAL naming the field; a good one is granted after', async () => {
  for (const [request, reason] of HOSTILE) {
    const err = await VfioUserClient.connect(rig.socket, {
      capabilities: { devlease: { request } },
      timeoutMs: 5000,
    }).then(
      (c) => {
        c.close();
        return null;
      },
      (e: Error & { code?: string; reason?: string }) => e,
    );
    const what = JSON.stringify(request);
    assert.ok(err, `${what} was granted`);
    assert.equal(err.code, 'EINVAL', `${what}: ${err.message}`);
    assert.match(err.reason ?? '', reason, what);
  }
  assert.equal(rig.broker.leases.all().length, 0, 'no lease was granted');
  const good = await VfioUserClient.connect(rig.socket, {
    capabilities: { devlease: { request: { kind: 'queue', devmemGranules: 1, note: { any: 'json' } } } },
  });
  try {
    // VERSION is answered while the grant's device commands are served: the lease enters the table after.
    await until('the lease granted', () => rig.broker.leases.all().length === 1, 10_000);
    assert.equal(rig.broker.leases.all()[0]!.request.devmemGranules, 1);
  } finally {
    good.close();
  }
  await until('the lease to be released', () => rig.broker.leases.all().length === 0);
});

test('readLeaseRequest: no devlease member leases the socket kind with defaults; devlease must be an object', () => {
  assert.deepEqual(readLeaseRequest({}, 'queue'), { kind: 'queue' });
  assert.deepEqual(readLeaseRequest({ devlease: {} }, 'queue'), { kind: 'queue' });
  assert.throws(
    () => readLeaseRequest({ devlease: 'x' }, 'queue'),
    (e: Error & { code?: string }) => e.code === 'EINVAL' && /devlease must be a JSON object/.test(e.message),
  );
  // Members the policy module may read pass through; kind is always the socket's.
  assert.deepEqual(readLeaseRequest({ devlease: { request: { team: 'a' } } }, 'queue'), {
    team: 'a',
    kind: 'queue',
  });
});

test('readLeaseRequest: the other members are copied as plain members, a "__proto__" one too', () => {
  const caps = JSON.parse(
    '{"devlease":{"request":{"__proto__":{"admin":true},"devmemGranules":2,"tag":"x"}}}',
  );
  const req = readLeaseRequest(caps, 'queue');
  assert.equal(Object.getPrototypeOf(req), Object.prototype, 'the copy keeps the plain prototype');
  assert.equal(req.admin, undefined, 'nothing reached through a planted prototype');
  assert.deepEqual(Object.getOwnPropertyDescriptor(req, '__proto__')?.value, { admin: true });
  assert.equal(req.kind, 'queue');
  assert.equal(req.devmemGranules, 2);
  assert.equal(req.tag, 'x');
  // A request naming the socket's kind itself is the same request.
  assert.deepEqual(
    readLeaseRequest(JSON.parse('{"devlease":{"request":{"kind":"queue","tag":"y"}}}'), 'queue'),
    {
      kind: 'queue',
      tag: 'y',
    },
  );
});
