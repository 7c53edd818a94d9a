// The generic driver clears a device between leases with a device reset: the only way to clear a device it
// knows nothing about. A device with no reset method (VFIO_DEVICE_FLAGS_RESET clear: QEMU's edu under
// vfio-pci, many integrated devices) is quarantined after its first lease, and the next client is told why and
// what to set; with `[generic] reuse_without_reset` it is leased again, as the last lease left it. Before, the
// second client got "leased whole to another client" with nobody holding it, for good.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Broker } from '../../src/broker/broker.js';
import { configFromObject } from '../../src/broker/config.js';
import { connect, type Lease } from '../../src/client/lease.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { withGenericBroker } from '../helpers/generic-broker.js';

after(trackFdLeaks());
/** BAR1 of the fixture: 4 KiB of plain memory, which a reset zeroes. */
const BAR1 = 1;

async function withGeneric(
  model: 'bars' | 'bars-no-reset',
  generic: Record<string, unknown> | undefined,
  fn: (broker: Broker, socket: string, audit: Record<string, unknown>[]) => Promise<void>,
): Promise<void> {
  const audit: Record<string, unknown>[] = [];
  await withGenericBroker(
    { model, config: generic ? { generic } : {}, auditSink: (line) => audit.push(JSON.parse(line)) },
    async (broker, socket) => {
      assert.equal(broker.driver.name, 'generic');
      await fn(broker, socket, audit);
    },
  );
}

/** A lease that leaves `pattern` in BAR1 and ends; resolves once its reclaim has finished either way. */
async function leaseAndLeave(
  socket: string,
  audit: Record<string, unknown>[],
  pattern: number,
): Promise<void> {
  const lease = await connect({ socket });
  await lease.client.regionWrite(BAR1, 0, new Uint8Array(16).fill(pattern));
  const id = lease.info.lease;
  lease.close();
  await until('the lease to be reclaimed', () =>
    audit.some((e) => (e.event === 'released' || e.event === 'quarantined') && e.lease === id),
  );
}

const bar1 = async (lease: Lease) => [...(await lease.client.regionRead(BAR1, 0, 16))];

test('a device with a reset: the next lease finds it cleared', async () => {
  await withGeneric('bars', undefined, async (_broker, socket, audit) => {
    await leaseAndLeave(socket, audit, 0xa5);
    const next = await connect({ socket });
    try {
      assert.deepEqual(await bar1(next), Array(16).fill(0), 'reset between the leases');
    } finally {
      next.close();
    }
  });
});

test('a device with no reset method is quarantined after its first lease; the next client is told why and what to set', async () => {
  await withGeneric('bars-no-reset', undefined, async (broker, socket, audit) => {
    const first = await connect({ socket });
    assert.match(first.info.isolation.regions?.reason ?? '', /no reset method.*as the last lease left it/);
    const id = first.info.lease;
    first.close();
    // Its end is audited with the reason among its problems; the driver leases the device no more.
    await until('the lease to end', () => audit.some((e) => e.event === 'released' && e.lease === id));
    const released = audit.find((e) => e.event === 'released' && e.lease === id)!;
    assert.match(String(released.problems), /quiesce: ENOTSUP: the device reports no reset method/);
    await assert.rejects(
      connect({ socket }),
      /quarantined: the device reports no reset method .*\[generic\] reuse_without_reset = true/,
    );
    const status = await broker.driver.status();
    assert.match(String(status.reset), /^none: quarantined after its first lease/);
  });
});

test('with reuse_without_reset the device is leased again, as the last lease left it', async () => {
  await withGeneric('bars-no-reset', { reuse_without_reset: true }, async (broker, socket, audit) => {
    await leaseAndLeave(socket, audit, 0x5a);
    assert.deepEqual(
      audit.filter((e) => e.event === 'released').map((e) => e.problems),
      [[]],
      'ended without a problem',
    );
    const next = await connect({ socket });
    try {
      assert.deepEqual(await bar1(next), Array(16).fill(0x5a), 'what the last lease left');
    } finally {
      next.close();
    }
    assert.match(String((await broker.driver.status()).reset), /^none: leased again/);
  });
});

test('[generic] reuse_without_reset must be a boolean', () => {
  assert.throws(
    () => configFromObject({ generic: { reuse_without_reset: 'yes' } }),
    /generic\.reuse_without_reset/,
  );
});
