// Layout validation at start, cooperative marking by config, and the generic
// driver (whole regions, cooperative, one client at a time) on a non-SA-1 device.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Broker } from '../../src/broker/broker.js';
import { configFromObject } from '../../src/broker/config.js';
import { connect } from '../../src/client/lease.js';
import { VfioUserDevice } from '../../src/device/vfio-user-device.js';
import { spawnSimulator } from '../../src/sim/host/child.js';
import { VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP } from '../../src/vfio/uapi/vfio.js';
import { ClientProc, startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { withGenericBroker } from '../helpers/generic-broker.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a layout that cannot isolate clients is refused, naming region, offset and stride', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-layout-'));
  const sim = await spawnSimulator({ socketPath: join(dir, 'sim.sock'), numQueues: 4, queueStride: 4096 });
  const device = await VfioUserDevice.connect(sim.socketPath);
  try {
    const config = configFromObject({ rundir: join(dir, 'run'), layout: { page_size: 65536 } });
    await assert.rejects(Broker.start({ config, device, log: () => {} }), {
      message:
        /layout cannot isolate clients: region 2 \(BAR2\): offset 0, stride 4096 is below or not a multiple of the 65536-byte page/,
    });
  } finally {
    await device.close();
    await sim.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('with layout.allow_cooperative the same layout is leased, and the lease says its page is cooperative', async () => {
  const rig = await startRig({
    sim: { numQueues: 4, queueStride: 4096 },
    config: { layout: { page_size: 65536, allow_cooperative: true } },
  });
  const c = await ClientProc.spawn();
  try {
    const info = (await c.call('connect', { socket: rig.socket })).info;
    assert.equal(info.isolation.queuePage.level, 'cooperative');
    assert.match(info.isolation.queuePage.reason, /more than one lease in a page/);
    assert.equal(info.isolation.iovaWindow.level, 'enforced');
    // The lease's DMA page follows layout.page_size (pgsizes in VERSION): the client allocates in 64 KiB pages.
    const { iova } = await c.call('alloc', { name: 'buf', size: 4096 });
    assert.equal(BigInt(iova) % 65536n, 0n);
  } finally {
    await c.exit();
    await rig.close();
  }
});

test('the generic driver leases whole regions, cooperatively, to one client at a time', async () => {
  await withGenericBroker({}, async (broker, socket) => {
    assert.equal(broker.driver.name, 'generic');
    assert.ok(socket, 'the generic driver offers lease kind "device"');
    const lease = await connect({ socket });
    assert.equal(lease.info.kind, 'device');
    assert.equal(lease.info.isolation.regions!.level, 'cooperative');
    assert.match(lease.info.isolation.regions!.reason, /whole region is shared/);
    // The generic driver cannot translate: the client's IOVAs are the device's, and the lease says so.
    assert.equal(lease.info.iovaView?.mode, 'identity');
    assert.match(lease.info.iovaView?.reason ?? '', /no address translation/);
    assert.equal(lease.info.iovaWindow?.base, 1n << 32n);
    // The mmap-able region comes with its own fd; the register region is reached through the broker.
    assert.ok(lease.region(2).length > 0);
    const regs = await lease.client.regionRead(0, 0, 4);
    assert.equal(regs.byteLength, 4);
    // Only the mappable region describes mmap-able areas (a sparse-mmap cap on the other would invite an mmap).
    const mappable = await lease.client.regionInfo(2);
    mappable.fd?.close();
    assert.deepEqual(mappable.caps.sparseMmap, [{ offset: 0n, size: mappable.size }]);
    const mediated = await lease.client.regionInfo(0);
    assert.equal(mediated.fd, null);
    assert.equal(mediated.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert.equal(
      mediated.caps.sparseMmap,
      undefined,
      'no sparse-mmap cap on a region that cannot be mmapped',
    );
    assert.equal(mediated.flags & VFIO_REGION_INFO_FLAG_CAPS, 0);
    const second = await connect({ socket }).catch((e) => e);
    assert.equal(second.code, 'EBUSY');
    assert.match(second.message, /leased whole to another client/);
    lease.close();
  });
});
