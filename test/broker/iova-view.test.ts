// Per-lease IOVA views (sa1.iova_view): with "translated" (the default) each
// lease's client sees its own IOVA space [0, window_size) — as a virtual
// machine maps guest RAM at guest-physical addresses — and the broker maps
// its memory at the lease's device range + the address, the queue's window
// and Q_XLAT programmed to match. "identity" keeps the device's addresses.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { configFromObject } from '../../src/broker/config.js';
import { connect, Sa1Queue } from '../../src/index.js';
import { MemFd } from '../../src/sys/index.js';
import { startRig } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());
const RW = 3;
const GiB = 1n << 30n;

test('translated view: the client maps at addresses from 0 up, the queue works on them, errors stay per call', async () => {
  const rig = await startRig();
  rig.broker.leases.log = () => {};
  const lease = await connect({ socket: rig.socket });
  try {
    assert.deepEqual(lease.info.iovaWindow, { base: 0n, size: 4n * GiB });
    assert.equal(lease.info.iovaView?.mode, 'translated');
    const held = rig.broker.leases.all()[0]!;
    const device = held.resources.window!;
    assert.ok(device.base >= 4n * GiB, 'the device range is the lease slot, above the broker own 4 GiB');

    const q = await Sa1Queue.create(lease); // rings from the client's DmaPool: view addresses too
    // Two pieces of "guest RAM" at guest-physical-like addresses: 2 GiB and the last 64 KiB below 4 GiB.
    using low = MemFd.create('ram-low', { size: 65536 });
    using high = MemFd.create('ram-high', { size: 65536 });
    const lowMap = low.map();
    const highMap = high.map();
    const LOW = 2n * GiB;
    const HIGH = 4n * GiB - 65536n;
    await lease.client.dmaMap({ fd: low.fd, iova: LOW, size: 65536n, flags: RW });
    await lease.client.dmaMap({ fd: high.fd, iova: HIGH, size: 65536n, flags: RW });
    assert.equal(held.mappings.get(LOW)?.deviceIova, device.base + LOW, 'mapped on the device at base + V');
    assert.equal(held.mappings.get(HIGH)?.deviceIova, device.base + HIGH);

    assert.equal((await q.fill(LOW + 0x100n, 256, 0x3c3c3c3c3c3c3c3cn)).status, 'OK');
    assert.ok(
      lowMap.u8.subarray(0x100, 0x200).every((b) => b === 0x3c),
      'FILL at view 2 GiB',
    );
    assert.equal((await q.copy(LOW + 0x100n, HIGH + 0x40n, 256)).status, 'OK');
    assert.ok(
      highMap.u8.subarray(0x40, 0x140).every((b) => b === 0x3c),
      'COPY to the top of the view',
    );

    // Per-call errors a client survives: overlap, unmap of nothing, no fd, outside the view.
    const again = await lease.client
      .dmaMap({ fd: low.fd, iova: LOW, size: 4096n, flags: RW })
      .catch((e) => e);
    assert.equal(again.code, 'EEXIST', again.message);
    const none = await lease.client.dmaUnmap({ iova: GiB, size: 4096n }).catch((e) => e);
    assert.equal(none.code, 'ENOENT', none.message);
    const noFd = await lease.client.dmaMap({ iova: GiB, size: 4096n, flags: RW }).catch((e) => e);
    assert.equal(noFd.code, 'EINVAL', noFd.message);
    const past = await lease.client
      .dmaMap({ fd: low.fd, iova: 4n * GiB, size: 4096n, flags: RW })
      .catch((e) => e);
    assert.equal(past.code, 'EPERM', past.message);
    assert.match(past.reason ?? past.message, /outside the lease's IOVA view \[0x0, \+0x100000000\)/);
    assert.equal((await q.nop()).status, 'OK', 'the lease carries on');

    // The device's own address of that memory is outside the queue's view: a window violation, not an alias.
    const alias = await q.fill(device.base + LOW, 64, 0n).catch((e) => e);
    assert.equal(alias.code, 'WINDOW_VIOLATION');
    await q.reset();

    const view = held.summary().iovaView as Record<string, unknown>;
    assert.deepEqual(view, {
      mode: 'translated',
      base: '0x0',
      size: '0x100000000',
      device: `0x${device.base.toString(16)}`,
    });
    await lease.client.dmaUnmap({ iova: LOW, size: 65536n });
    assert.equal(held.mappings.has(LOW), false);
    lowMap.unmap();
    highMap.unmap();
    await q.close();
  } finally {
    lease.close();
    await rig.close();
  }
});

test('identity view (sa1.iova_view = "identity"): the client uses the device range itself; 0 is refused', async () => {
  const rig = await startRig({ config: { sa1: { iova_view: 'identity', window_size: '1GiB' } } });
  rig.broker.leases.log = () => {};
  const lease = await connect({ socket: rig.socket });
  try {
    const device = rig.broker.leases.all()[0]!.resources.window!;
    assert.deepEqual(lease.info.iovaWindow, device);
    assert.equal(lease.info.iovaView?.mode, 'identity');
    using m = MemFd.create('zero', { size: 4096 });
    const err = await lease.client.dmaMap({ fd: m.fd, iova: 0n, size: 4096n, flags: RW }).catch((e) => e);
    assert.equal(err.code, 'EPERM');
    const q = await Sa1Queue.create(lease);
    const buf = await lease.dma.alloc(4096);
    assert.ok(buf.iova >= device.base);
    assert.equal((await q.fill(buf.iova, 64, 0x0101010101010101n)).status, 'OK');
    assert.ok(buf.u8.subarray(0, 64).every((b) => b === 1));
    await buf.free();
    await q.close();
  } finally {
    lease.close();
    await rig.close();
  }
});

test('sa1.iova_view is validated at start, naming the key', () => {
  assert.equal(configFromObject({}).sa1.iovaView, 'translated');
  assert.equal(configFromObject({}).sa1.windowSize, 4n * GiB);
  assert.throws(
    () => configFromObject({ sa1: { iova_view: 'mirrored' } }),
    /sa1\.iova_view: must be "translated" or "identity"/,
  );
});
