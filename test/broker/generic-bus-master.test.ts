// The generic driver's bus master. A lease's config space is virtual (the client's command-register writes are
// stored, not passed on), so before, nothing set bus master on a device the generic driver leased: a real
// device then neither did DMA nor sent its MSI/MSI-X messages (found in the guest, test/kernel/guest/
// aer-msix.test.ts: a virtio-net's config interrupt never came). Now a grant sets it and the lease's end clears
// it, before the reset; a device whose config space takes no write is leased as it is, and its status says so.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Broker } from '../../src/broker/broker.js';
import { connect } from '../../src/client/lease.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../src/vfio/uapi/pci-regs.js';
import { VFIO_PCI_CONFIG_REGION_INDEX } from '../../src/vfio/uapi/vfio.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { withGenericBroker } from '../helpers/generic-broker.js';

after(trackFdLeaks());

/** The device's own command register (not the lease's virtual one). */
async function command(broker: Broker): Promise<number> {
  const b = await broker.device.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
  return b[0]! | (b[1]! << 8);
}

test('generic driver: bus master is set for each lease and cleared at its end; the client cannot clear it', async () => {
  const audit: Record<string, unknown>[] = [];
  await withGenericBroker({ auditSink: (line) => audit.push(JSON.parse(line)) }, async (broker, socket) => {
    assert.equal(await command(broker), 0, 'off before any lease');
    for (let round = 1; round <= 2; round++) {
      const lease = await connect({ socket });
      const id = lease.info.lease;
      try {
        assert.equal(
          (await command(broker)) & PCI_COMMAND_MASTER,
          PCI_COMMAND_MASTER,
          `on for lease ${round}`,
        );
        // The lease's config space is virtual: its command register is the client's, not the device's.
        await lease.client.regionWrite(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, new Uint8Array(2));
        assert.equal(
          (await command(broker)) & PCI_COMMAND_MASTER,
          PCI_COMMAND_MASTER,
          'still on after the client wrote 0',
        );
      } finally {
        lease.close();
      }
      await until('the lease to be released', () =>
        audit.some((e) => e.event === 'released' && e.lease === id),
      );
      assert.equal((await command(broker)) & PCI_COMMAND_MASTER, 0, `off once lease ${round} ended`);
    }
    assert.equal((await broker.driver.status())['busMaster'], 'set at each grant, cleared at each lease end');
  });
});

test('generic driver: a device whose config space takes no write is leased as it is, and its status says why', async () => {
  await withGenericBroker({ model: 'bars' }, async (broker, socket) => {
    const lease = await connect({ socket });
    lease.close();
    assert.match(
      String((await broker.driver.status())['busMaster']),
      /the device refused its command register \(EPERM: .*config space is read-only/,
    );
  });
});

test('generic driver: a grant that fails after activate() leaves bus master off (release() clears it)', async () => {
  await withGenericBroker({}, async (broker) => {
    // The driver's part of a grant, then its failure (as when handing out a slice fails): acquire, activate,
    // release, with no lease and so no quiesce.
    const res = broker.driver.acquire({ kind: 'device' } as never);
    await broker.driver.activate(res);
    assert.equal((await command(broker)) & PCI_COMMAND_MASTER, PCI_COMMAND_MASTER, 'on once activated');
    broker.driver.release(res);
    await until('bus master to be cleared', async () => ((await command(broker)) & PCI_COMMAND_MASTER) === 0);
  });
});
