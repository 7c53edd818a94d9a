// Runs INSIDE a kernel-rig guest (npm run test:kernel), never on the host.
// The kernel's AER driver reports an uncorrectable error of a device bound to
// vfio-pci by signalling the eventfd wired to its ERR irq, and carries on
// without waiting. Unwired, a leased device's error went unnoticed until it
// misbehaved. The broker wires ERR and recovers the device: the client is
// told, the lease is reclaimed, the device reset, and leasing resumes. QEMU
// injects the error, asked by the host (fixtures/aer.ts). (The device's error
// reporting bits, which the broker also sets for kernels before 6.0, are set
// by these kernels already: test/device-kernel/error-reporting.test.ts.)
//
// During an upgrade's transfer the old broker leaves the ERR eventfd unread
// and hands it over; the new broker watches it from its commit. An error the
// kernel reports in between (once) is heard by the broker that carries on.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect } from '../../../src/client/index.js';
import { PCI_COMMAND, PCI_COMMAND_MEMORY } from '../../../src/vfio/uapi/pci-regs.js';
import { trackFdLeaks } from '../../helpers/fds.js';
import { stopped } from '../../helpers/proc-stat.js';
import { aerBdf, aerCount, aerInject, injectAndAwaitRecovery } from './fixtures/aer.js';
import { Daemon, until } from './fixtures/daemon.js';
import { withGenericKernelBroker } from './fixtures/generic-broker.js';
import { inKernelGuest } from './fixtures/guest.js';

after(trackFdLeaks());

inKernelGuest(
  'an AER-capable device (a virtio-net behind a PCIe root port, bound to vfio-pci by scripts/kernel-rig/init.sh)',
  'DEVLEASE_AER_BDF',
);

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
        await injectAndAwaitRecovery(audit, 'POISON_TLP');
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

/** The device's config header as the hardware has it (sysfs reads the device, not vfio-pci's virtual view). */
function hardwareHeader(): Buffer {
  return readFileSync(`/sys/bus/pci/devices/${aerBdf}/config`).subarray(0, 0x40);
}
/** The six BAR registers. */
const bars = (h: Buffer) => h.subarray(0x10, 0x28).toString('hex');
/** virtio-pci (modern, QEMU's layout): the common configuration at BAR4 offset 0; device_feature at 0x04. */
const VIRTIO_BAR = 4;
const DEVICE_FEATURE = 0x04;

// A fatal error: the kernel's AER recovery resets the link (a secondary bus reset of the root port) after it
// signalled ERR, which clears the device's BARs, command register and MSI-X, and nothing puts them back for
// vfio-pci (it has no slot_reset). VFIO_DEVICE_RESET saves and restores the state the device has: the cleared
// one. The device decoded nothing any more: every BAR access read all-ones.
test('broker: a fatal AER error (the link reset) is recovered: the device decodes its BARs again', async () => {
  const audit: Record<string, unknown>[] = [];
  await withGenericKernelBroker(
    { bdf: aerBdf, auditSink: (line) => audit.push(JSON.parse(line)) },
    async (broker, socket) => {
      const header = hardwareHeader();
      assert.ok(header.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MEMORY, 'memory decode on before');
      const lease = await connect({ socket });
      let features: number;
      try {
        features = (await lease.client.regionRead(VIRTIO_BAR, DEVICE_FEATURE, 4)).readUInt32LE(0);
        assert.notEqual(features, 0xffff_ffff, 'the device answers before the error');
        await injectAndAwaitRecovery(audit, 'MALF_TLP');
        assert.equal(audit.filter((r) => r.event === 'device-error').length, 1, 'one error, one recovery');
      } finally {
        lease.close();
      }
      const after = hardwareHeader();
      assert.equal(bars(after), bars(header), 'the BARs are back in the hardware');
      assert.ok(after.readUInt16LE(PCI_COMMAND) & PCI_COMMAND_MEMORY, 'memory decode on again');
      const next = await connect({ socket });
      try {
        const again = (await next.client.regionRead(VIRTIO_BAR, DEVICE_FEATURE, 4)).readUInt32LE(0);
        assert.equal(again, features, 'the device answers as before');
      } finally {
        next.close();
      }
      await until('every lease to end', () => broker.leases.all().length === 0);
    },
  );
});

/** The eventfds of `pid` whose count is not zero (signalled, and not read), by fd number. */
function signalledEventFds(pid: number): Set<string> {
  const fds = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    try {
      const m = /^eventfd-count:\s+(\w+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m && Number.parseInt(m[1]!, 16) !== 0) fds.add(fd);
    } catch {
      // closed meanwhile
    }
  }
  return fds;
}

const GENERIC_DRIVER = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'generic-driver.js');

test('upgrade: an AER error during the transfer is heard and recovered by the new broker', async () => {
  // The old broker stops itself (SIGSTOP) once the state went out, before it reads the new broker's answer
  // (upgrade.ts, testStop): after SIGCONT its event loop runs while it waits for 'ready', as it would for an error
  // that came during the transfer.
  const d = new Daemon({
    bdf: aerBdf,
    name: 'aerdev',
    config: `[device]\nname = "aerdev"\ndriver = "${GENERIC_DRIVER}"\n`,
    env: { DEVLEASE_TEST_UPGRADE_OLD_STOP: 'transferred' },
  });
  await d.start();
  let lease: Awaited<ReturnType<typeof connect>> | null = null;
  try {
    const oldPid = (await d.request({ op: 'status' })).pid as number;
    // A lease carried by the upgrade (the generic driver's slices are cooperative: nothing audited to carry).
    lease = await connect({ socket: d.socket('device') });
    const heard: string[] = [];
    for (const ev of ['device-reset', 'disconnected']) lease.on(ev, () => heard.push(ev));
    const upgrading = d.request({ op: 'upgrade', deadlineMs: 150_000 });
    upgrading.catch(() => {}); // awaited below; a rejection meanwhile is not unhandled
    await until('the old broker to stop after the transfer', () => stopped(oldPid), 150_000);
    const before = signalledEventFds(oldPid);
    const nonfatal = aerCount('nonfatal');
    aerInject('POISON_TLP');
    await until('the kernel to count the error', () => aerCount('nonfatal') === nonfatal + 1, 60_000);
    await until(
      "the kernel to signal the old broker's ERR eventfd (stopped, it reads nothing yet)",
      () => [...signalledEventFds(oldPid)].some((fd) => !before.has(fd)),
      30_000,
    );
    process.kill(oldPid, 'SIGCONT');
    const r = await upgrading;
    assert.equal(r.upgraded, true);
    const s = await d.request({ op: 'status' });
    assert.notEqual(s.pid, oldPid, 'a new broker process');
    // The new broker's own records: the old one's were collected before the error.
    const audit = async () => (await d.request({ op: 'audit' })) as Record<string, unknown>[];
    await until(
      'the new broker to recover the device',
      async () => (await audit()).some((e) => e.event === 'device-recovered'),
      60_000,
    );
    const errors = (await audit()).filter((e) => e.event === 'device-error');
    assert.equal(errors.length, 1, 'one error, one recovery');
    assert.match(String(errors[0]!.reason), /uncorrectable PCIe error of the device \(AER/);
    await until('the client to hear its lease end', () => heard.includes('disconnected'), 30_000);
    assert.deepEqual(
      heard,
      ['device-reset', 'disconnected'],
      'told by the new broker, on the same connection',
    );
    const next = await connect({ socket: d.socket('device') });
    next.close();
  } catch (err) {
    throw Object.assign(err as Error, { message: `${(err as Error).message}\nbroker output:\n${d.out}` });
  } finally {
    lease?.close();
    await d.stop();
  }
});
