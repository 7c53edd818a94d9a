// Hostile or unlucky clients: a pipe offered as an eventfd, a DMA_MAP racing
// its own reclaim, and (with revoke off) data left in slices for the next lease.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { MemFd } from '../../src/sys/index.js';
import { ClientProc, startRig, until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('an fd that is not an eventfd is refused as an interrupt; the broker keeps working', async () => {
  const rig = await startRig();
  const c = await ClientProc.spawn();
  try {
    const info = (await c.call('connect', { socket: rig.socket })).info;
    const err = await c.call('pipeAsNotice').catch((e) => e);
    assert.equal(err.code, 'EINVAL');
    assert.match(err.message, /interrupt fds must be eventfds/);
    rig.broker.leases.revoke(info.lease, 0); // notices go out without blocking
    await until('the lease to be released', () => rig.broker.leases.all().length === 0);
  } finally {
    await c.exit();
    await rig.close();
  }
});

test('a DMA_MAP still in flight when reclaim starts is undone by the request itself: nothing stays mapped', async () => {
  // A slow policy hook holds the map in flight while the owner revokes with a short deadline.
  const rig = await startRig({
    policyModule: { map: () => new Promise((r) => setTimeout(() => r({ allow: true }), 150)) },
  });
  const c = await ClientProc.spawn();
  try {
    const info = (await c.call('connect', { socket: rig.socket })).info;
    const mapsBefore = (await rig.sim.stats()).dmaMaps;
    // Reclaim waits for the requests in flight, then quiesces: at that moment the raced map must already be
    // gone from the device, undone by the request that made it (not left for reclaim's unmap to find).
    const mapsAtQuiesce: number[] = [];
    const driver = rig.broker.driver;
    const quiesce = driver.quiesce.bind(driver);
    driver.quiesce = async (res) => {
      mapsAtQuiesce.push((await rig.sim.stats()).dmaMaps);
      return quiesce(res);
    };
    const alloc = c.call('alloc', { name: 'late', size: 4096 }).then(
      (r) => ({ ok: r }),
      (e: Error & { code?: string }) => ({ err: e }),
    );
    await new Promise((r) => setTimeout(r, 20));
    rig.broker.leases.revoke(info.lease, 10);
    await until('the lease to be released', () => rig.broker.leases.all().length === 0, 3000);
    // The client is never told the map worked: its session ended with the DMA_MAP unanswered.
    const result = await alloc;
    assert.ok('err' in result, `the late alloc failed (got ${JSON.stringify(result)})`);
    assert.equal(result.err.code, 'ECONNRESET');
    assert.match(result.err.message, /DMA_MAP: vfio-user server closed the connection/);
    assert.deepEqual(mapsAtQuiesce, [mapsBefore], 'the raced map was undone before reclaim went on');
    assert.equal((await rig.sim.stats()).dmaMaps, mapsBefore);
    // The device holds nothing at the window base: mapping it again succeeds (no EEXIST).
    const base = BigInt(info.iovaWindow.base);
    using mem = MemFd.create('probe', { size: 4096 });
    await rig.device.dmaMap({ fd: mem.fd, offset: 0n, iova: base, size: 4096n, read: true, write: true });
    await rig.device.dmaUnmap(base, 4096n);
  } finally {
    await c.exit();
    await rig.close();
  }
});

test('with revoke off, the next lease of a released slice finds it scrubbed', async () => {
  const rig = await startRig({ sim: { numQueues: 1 }, config: { lifetime: { revoke: false } } });
  const a = await ClientProc.spawn();
  const b = await ClientProc.spawn();
  try {
    await a.call('connect', { socket: rig.socket, request: { devmemGranules: 1 } });
    await a.call('pageWrite', { offset: 0x2000, value: 0xdeadbeef });
    await a.call('devmemWrite', { offset: 64, value: 0xfeedf00d });
    await a.call('close');
    await until('the release to be observed', () => rig.broker.leases.all().length === 0, 3000);
    await b.call('connect', { socket: rig.socket, request: { devmemGranules: 1 } });
    assert.equal(await b.call('pageRead', { offset: 0x2000 }), 0, 'queue page scrubbed');
    assert.equal(await b.call('devmemRead', { offset: 64 }), 0, 'device memory scrubbed');
  } finally {
    await Promise.all([a.exit(), b.exit()]);
    await rig.close();
  }
});
