// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// The kernel's AER driver reports an uncorrectable error of a device bound to
// vfio-pci by signalling the eventfd wired to its ERR irq, and carries on
// without waiting. Unwired, a leased device's error went unnoticed until it
// misbehaved. The broker wires ERR and recovers the device: the client is
// told, the lease is reclaimed, the device reset, and leasing resumes. QEMU
// injects the error, asked by the host (fixtures/aer.ts). (The device's error
// reporting bits, which the broker also sets for kernels before 6.0, are set
// by these kernels already: test/device-kernel/error-reporting.test.ts.)
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect } from '../../../src/client/index.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { aerBdf, aerCount, aerInject } from './fixtures/aer.js';
import { until } from './fixtures/daemon.js';
import { withGenericKernelBroker } from './fixtures/generic-broker.js';
import { guestConfig } from './fixtures/guest.js';

after(trackFdLeaks());

test('runs inside a kernel-rig guest with an AER-capable device (a virtio-net behind a PCIe root port) bound to vfio-pci', () => {
  assert.ok(
    guestConfig === 'legacy' || guestConfig === 'iommufd',
    `DEVLEASE_KERNEL_GUEST is '${guestConfig}': run npm run test:kernel`,
  );
  assert.match(
    aerBdf,
    /^[0-9a-f]{4}:/,
    'DEVLEASE_AER_BDF names the virtio-net (scripts/kernel-rig/init.sh binds it)',
  );
});

test('broker: an AER error of the leased device reaches it; the client is told, the device reset, and leased again', async () => {
  const audit: Record<string, unknown>[] = [];
  await withGenericKernelBroker(
    { bdf: aerBdf, auditSink: (line) => audit.push(JSON.parse(line)) },
    async (broker, socket) => {
      assert.equal(broker.device.resettable, true, 'the device has a reset method (FLR)');
      const lease = await connect({ socket });
      const heard: string[] = [];
      for (const ev of ['device-reset', 'disconnected']) lease.on(ev, () => heard.push(ev));
      try {
        const nonfatal = aerCount('nonfatal');
        aerInject('POISON_TLP');
        await until(
          'the broker to recover the device (see the [host] aer-inject line for QEMU)',
          () => audit.some((r) => r.event === 'device-recovered'),
          60_000,
        );
        assert.equal(aerCount('nonfatal'), nonfatal + 1, 'the kernel saw one non-fatal error');
        const errors = audit.filter((r) => r.event === 'device-error');
        assert.equal(errors.length, 1, 'one error, one recovery');
        assert.match(String(errors[0]!.reason), /uncorrectable PCIe error of the device \(AER/);
        assert.ok(
          audit.some((r) => r.event === 'reclaim' && /^device-error/.test(String(r.reason))),
          'the lease was reclaimed for the error',
        );
        await until('the client to hear its lease end', () => heard.includes('disconnected'), 30_000);
        assert.deepEqual(heard, ['device-reset', 'disconnected']);
      } finally {
        lease.close();
      }
      const next = await connect({ socket });
      next.close();
      await until('every lease to end', () => broker.leases.all().length === 0);
    },
  );
});
