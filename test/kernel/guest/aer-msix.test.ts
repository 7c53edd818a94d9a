// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// A lease's MSI-X vectors after a fatal AER error. The kernel's recovery resets the link, which clears the
// device's MSI-X capability and table as well as its BARs (aer.test.ts); the broker restores decode and resets
// the device. A lease granted afterwards has its vectors wired again (SET_IRQS), and vfio-pci writes their
// messages into the table then, so interrupts reach the client as before. Shown with the virtio-net's config
// interrupt: the client sets the device up as far as DRIVER_OK with its config vector on the lease's vector 0,
// and the host takes the NIC's link down (QEMU's set_link), which virtio reports on that vector.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, type Lease } from '../../../src/client/index.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { within } from '../../helpers/within.js';
import { aerBdf, injectAndAwaitRecovery, setLink } from './fixtures/aer.js';
import { until } from './fixtures/daemon.js';
import { withGenericKernelBroker } from './fixtures/generic-broker.js';
import { inKernelGuest } from './fixtures/guest.js';

after(trackFdLeaks());

inKernelGuest(
  'an AER-capable device (a virtio-net behind a PCIe root port, bound to vfio-pci by scripts/kernel-rig/init.sh)',
  'DEVLEASE_AER_BDF',
);

/** virtio-pci modern common configuration (struct virtio_pci_common_cfg), at BAR4 offset 0 in QEMU's layout. */
const VIRTIO_BAR = 4;
const COMMON = {
  driver_feature_select: 0x08,
  driver_feature: 0x0c,
  msix_config: 0x10,
  device_status: 0x14,
} as const;
/** Device status bits (virtio 1.x, 2.1). */
const STATUS = { ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8 } as const;
/** VIRTIO_F_VERSION_1: feature bit 32, bit 0 of the second feature word. */
const VERSION_1_HIGH = 1;

const le = (bytes: number, v: number): Uint8Array => {
  const b = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (v >>> (8 * i)) & 0xff;
  return b;
};

/** Through the lease, as a driver would: reset, features (VERSION_1 only), config vector 0, DRIVER_OK. */
async function driverOk(lease: Lease): Promise<void> {
  const c = lease.client;
  const status = async () => (await c.regionRead(VIRTIO_BAR, COMMON.device_status, 1))[0]!;
  await c.regionWrite(VIRTIO_BAR, COMMON.device_status, le(1, 0));
  await until('the virtio reset', async () => (await status()) === 0);
  await c.regionWrite(VIRTIO_BAR, COMMON.device_status, le(1, STATUS.ACKNOWLEDGE | STATUS.DRIVER));
  await c.regionWrite(VIRTIO_BAR, COMMON.driver_feature_select, le(4, 1));
  await c.regionWrite(VIRTIO_BAR, COMMON.driver_feature, le(4, VERSION_1_HIGH));
  await c.regionWrite(VIRTIO_BAR, COMMON.driver_feature_select, le(4, 0));
  await c.regionWrite(VIRTIO_BAR, COMMON.driver_feature, le(4, 0));
  const negotiated = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK;
  await c.regionWrite(VIRTIO_BAR, COMMON.device_status, le(1, negotiated));
  assert.equal((await status()) & STATUS.FEATURES_OK, STATUS.FEATURES_OK, 'the device took the features');
  await c.regionWrite(VIRTIO_BAR, COMMON.msix_config, le(2, 0));
  const vector = await c.regionRead(VIRTIO_BAR, COMMON.msix_config, 2);
  assert.equal(vector[0]! | (vector[1]! << 8), 0, 'the config vector is MSI-X vector 0 (0xffff: refused)');
  await c.regionWrite(VIRTIO_BAR, COMMON.device_status, le(1, negotiated | STATUS.DRIVER_OK));
}

/** The config interrupt of a link change reaches the lease's vector 0; the device is left reset. */
async function configInterrupt(lease: Lease, when: string): Promise<void> {
  await driverOk(lease);
  for (const up of [false, true]) {
    const irq = lease.nextInterrupt();
    setLink(up);
    const vector = await within(irq, `the config interrupt of link ${up ? 'up' : 'down'} ${when}`, 30_000);
    assert.equal(vector, 0, `on the lease's vector 0 ${when}`);
  }
  await lease.client.regionWrite(VIRTIO_BAR, COMMON.device_status, le(1, 0));
}

test("broker: after a fatal AER error, a new lease's MSI-X vector fires as before", async () => {
  const audit: Record<string, unknown>[] = [];
  await withGenericKernelBroker(
    { bdf: aerBdf, auditSink: (line) => audit.push(JSON.parse(line)) },
    async (broker, socket) => {
      const first = await connect({ socket });
      try {
        assert.ok(
          first.info.vectors >= 1,
          `the lease has the device's MSI-X vectors (${first.info.vectors})`,
        );
        await configInterrupt(first, 'before the error');
      } finally {
        first.close();
      }
      await until('the first lease to end', () => broker.leases.all().length === 0);
      await injectAndAwaitRecovery(audit, 'MALF_TLP');
      const next = await connect({ socket });
      try {
        await configInterrupt(next, 'after the recovery');
      } finally {
        next.close();
      }
      await until('every lease to end', () => broker.leases.all().length === 0);
    },
  );
});
