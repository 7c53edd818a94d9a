// The lease client against a broker that sends what no broker should (test/helpers/fake-lease-broker.ts): each
// case is refused with an error naming the problem (EPROTO), before the client acts on it, and every fd the
// connection brought is closed.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import * as P from '../../src/vfio/user/protocol.js';
import { type FakeBroker, type FakeBrokerOptions, fakeLeaseBroker } from '../helpers/fake-lease-broker.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** Lease.connect to a fake broker; the broker is closed after, and the fds are checked around both. */
async function leaseFrom<T>(opts: FakeBrokerOptions, use: (broker: FakeBroker) => Promise<T>): Promise<T> {
  return assertNoFdLeak(async () => {
    const broker = fakeLeaseBroker(opts);
    try {
      return await use(broker);
    } finally {
      broker.close();
    }
  });
}

test('the fake broker itself is well-formed: a lease connects, with the info in VERSION or in its region', async () => {
  for (const infoInVersion of [true, false]) {
    await leaseFrom({ infoInVersion }, async (broker) => {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      assert.equal(lease.info.lease, 'queue-9');
      assert.equal(lease.region(2).length, 4096);
      lease.close();
    });
  }
});

test('an info region larger than 1 MiB is refused (EPROTO) before any of it is read', async () => {
  // 2 MiB here (2^36 did the same: the whole size was read at once, the event loop stuck building the reads).
  await leaseFrom({ infoInVersion: false, infoSize: 2n << 20n }, async (broker) => {
    await assert.rejects(
      within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect refusing the info'),
      {
        code: 'EPROTO',
        message: /info region 9: size 2097152 is not an info region's/,
      },
    );
    assert.ok(!broker.commands.includes(P.VFIO_USER_REGION_READ), 'nothing of it was read');
  });
});
