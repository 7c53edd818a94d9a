// A broker that lists faults without counting them (no faultsTotal in its info: one from before the count):
// the client takes the list's length as the count, so each new record is reported once, and an ERR with no
// new record is a reset.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { connect } from '../../src/client/lease.js';
import { uncountingBroker } from '../helpers/fake-lease-broker.js';
import { assertNoFdLeak, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a broker that does not count faults: the new records of its list are reported, then a reset', async () => {
  await assertNoFdLeak(async () => {
    const broker = uncountingBroker();
    try {
      const lease = await within(connect({ socket: broker.socket, timeoutMs: 2000 }), 'connect');
      try {
        assert.equal(lease.info.faultsTotal, 0, 'no faults listed: none counted');
        const addresses = async (what: string) => {
          const [faults, missed] = await within(once(lease, 'device-fault'), what);
          assert.equal(missed, 0, `${what}: none missed`);
          return (faults as { address: bigint }[]).map((f) => f.address);
        };
        broker.list(2);
        assert.deepEqual(await addresses('the first two faults'), [0x1000n, 0x2000n]);
        assert.equal(lease.info.faultsTotal, 2, 'the list counted');
        broker.list(3);
        assert.deepEqual(await addresses('the third fault'), [0x3000n], 'only the new record');
        broker.list(3);
        await within(once(lease, 'device-reset'), 'ERR with no new fault: a reset');
      } finally {
        lease.close();
      }
    } finally {
      broker.close();
    }
  });
});
