// A queue page's revoke kills the holder's mapping on the simulator's front
// end, before the device worker has done anything (issue 16, fifth pass;
// docs/SA-1.md "Revoke: the holder's mapping dies on the front end"). Shown
// with the worker stalled (inject 'stall') past the front end's command
// deadline: the revoke cannot be answered, yet the old memory is already
// truncated and a guarded mapping of it reads as revoked; once the worker
// runs again the queue is reset and the page has fresh memory. No fd leaks.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ds from '../../src/sim/model/datasheet.js';
import { encodeDmaBufRequest } from '../../src/sim/model/slices.js';
import { type Fd, Mapping, native } from '../../src/sys/index.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_PCI_BAR2_REGION_INDEX,
  vfio_device_feature_dma_buf_revoke,
} from '../../src/vfio/uapi/vfio.js';
import { memfdFdCount } from '../helpers/fds.js';
import { BAR0, boot, qcfg, r32, TestQueue } from './helpers/driver.js';
import { bootedRig, openFds, type Rig, rig, until, untilWorkerAnswers } from './helpers/real.js';

const FW = 0x10_0000n;
const HOST = 0x20_0000n;
const STRIDE = 65536;

/** A slice fd of queue q's page (the dma-buf feature). */
const queuePage = async (r: Rig, q: number) =>
  (
    await r.client.feature({
      flags: VFIO_DEVICE_FEATURE_GET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF,
      data: encodeDmaBufRequest(VFIO_PCI_BAR2_REGION_INDEX, [
        { offset: BigInt(q * STRIDE), length: BigInt(STRIDE) },
      ]),
    })
  ).fds[0]!;

/**
 * Spare page memfds open in this process (the device worker is a thread of it: memfd-backing.ts names them
 * sa1-queue-spare.N). Counted without a request: a request wakes the device, which would make a wanted spare
 * then, and the tests below are about the device making it on its own while quiet.
 */
const spareMemfds = () => memfdFdCount('sa1-queue-spare.');

/** The revoke feature for a slice fd. */
const revokeSlice = (r: Rig, fd: Fd) =>
  r.client.feature({
    flags: VFIO_DEVICE_FEATURE_SET,
    feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
    data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
    fds: [fd],
  });

/** Queue 1 configured and enabled on `page` (its queue page, mapped), rings in the first 4 KiB of `host`. */
async function enableQueue1(r: Rig, host: { view: Uint8Array }, page: Uint8Array): Promise<TestQueue> {
  const tq = new TestQueue(
    r.bus,
    { q: 1, mem: { iova: HOST, view: host.view.subarray(0, 0x1000) }, sqSize: 8, cqSize: 8, page },
    STRIDE,
  );
  await tq.configure();
  assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)), ds.Q_CTRL_ENABLE, 'queue 1 is enabled');
  return tq;
}

/** `fn` on a booted rig (FW at 1 MiB, the same as FW above), closed after it; every fd it opened closed again. */
async function onBootedRig(opts: Parameters<typeof rig>[0], fn: (r: Rig) => Promise<void>): Promise<void> {
  const before = openFds();
  const r = await bootedRig(opts);
  try {
    await fn(r);
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
}

test("a queue page's revoke kills the holder's mapping while the device worker is stalled", async () => {
  const before = openFds();
  // The front end gives up on the stalled worker after 1 s; the stall lasts well past that.
  const r = await rig({ numQueues: 2, commandTimeoutMs: 1000 });
  try {
    await boot(r.bus, await r.map(FW, 64 * 1024));
    const host = await r.map(HOST, 1 << 20);
    const range = [{ offset: BigInt(STRIDE), length: BigInt(STRIDE) }];
    const get = { flags: VFIO_DEVICE_FEATURE_GET, feature: VFIO_DEVICE_FEATURE_DMA_BUF };
    const [old] = (
      await r.client.feature({ ...get, data: encodeDmaBufRequest(VFIO_PCI_BAR2_REGION_INDEX, range) })
    ).fds;
    const oldMap = Mapping.map(old!, { length: STRIDE, guard: true });
    const tq = await enableQueue1(r, host, oldMap.u8);
    await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
    await tq.reap(1);
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)), ds.Q_CTRL_ENABLE, 'the queue runs');

    r.sim.inject({ kind: 'stall', ms: 8000 });
    await assert.rejects(
      r.client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
        fds: [old!],
      }),
      /EIO/,
      'the stalled worker cannot confirm the revoke',
    );
    // Still stalled (the front end's deadline is far inside the stall): the holder's memory is gone anyway.
    assert.equal(native.fstat(old!.fd).size, 0, 'the old memory was truncated without the worker');
    void oldMap.u32[0]; // a guarded mapping notices on access
    assert.equal(oldMap.isRevoked(), true, "the holder's mapping is dead");
    await assert.rejects(r.sim.stats(), /stuck|did not answer/, 'the worker has not answered yet');

    await untilWorkerAnswers(r);
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)), 0, 'the worker then reset the queue');
    const [fresh] = (
      await r.client.feature({ ...get, data: encodeDmaBufRequest(VFIO_PCI_BAR2_REGION_INDEX, range) })
    ).fds;
    assert.notEqual(native.fstat(fresh!.fd).ino, native.fstat(old!.fd).ino, 'the page has fresh memory');
    const freshMap = Mapping.map(fresh!, { length: STRIDE });
    assert.deepEqual(
      [...freshMap.u32.subarray(0, ds.QP_REGISTERS_END / 4)],
      new Array(ds.QP_REGISTERS_END / 4).fill(0),
    );
    freshMap.unmap();
    oldMap.unmap();
    fresh!.close();
    old!.close();
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

// The spare a revoke used is made again after the revoke, once the device is quiet (issue 16, seventeenth
// pass), not inside it: the next revoke still kills its holder's mapping on the front end.
test('after a revoke the next spare is made once the device is quiet, and the next revoke uses it', () =>
  onBootedRig({ numQueues: 2, commandTimeoutMs: 1000 }, async (r) => {
    const first = await queuePage(r, 0);
    const second = await queuePage(r, 1);
    assert.equal((await r.sim.stats()).spareReady, true, 'the device starts with a spare');
    const spares = spareMemfds();
    await revokeSlice(r, first);
    assert.equal(native.fstat(first.fd).size, 0, 'the first revoke truncated the old memory');
    // No queue is enabled, so the device sleeps until a request; the sleep is cut short for the spare. Watched
    // without a request: without the cut, no spare would come at all.
    await until(() => spareMemfds() > spares, 'the worker to make the next spare while the device is quiet');
    // Made already: the request that asks now is not what made it.
    await until(async () => (await r.sim.stats()).spareReady, 'the new spare offered to the front end');

    // With the worker held, only a spare already made lets the front end kill the second holder's mapping.
    r.sim.inject({ kind: 'stall', ms: 4000 });
    await assert.rejects(revokeSlice(r, second), /EIO/, 'the stalled worker cannot confirm the revoke');
    assert.equal(
      native.fstat(second.fd).size,
      0,
      'the second revoke truncated without the worker: a spare was there',
    );
    await untilWorkerAnswers(r);
    await until(async () => (await r.sim.stats()).spareReady, 'the spare after the second revoke');
    first.close();
    second.close();
  }));

// The same with a queue enabled and a device that polls it only once a second (no kick fds out): the worker
// shortens its sleep while a spare is wanted, so the spare does not wait for the next poll.
test('the next spare does not wait for the idle poll of a device polling an enabled queue', () =>
  onBootedRig({ numQueues: 2, idlePollUs: 1_000_000 }, async (r) => {
    const host = await r.map(HOST, 1 << 20);
    const held = await queuePage(r, 1);
    const heldMap = Mapping.map(held, { length: STRIDE });
    await enableQueue1(r, host, heldMap.u8); // polled once a second
    const revoked = await queuePage(r, 0);
    const spares = spareMemfds();
    await revokeSlice(r, revoked);
    // Watched without a request (one wakes the device, which would make the spare then). Made in well under a
    // millisecond when the sleep is cut short for it; uncut, at the device's next idle poll, 1 s after the
    // revoke: the deadline lies between, far from both.
    await until(() => spareMemfds() > spares, 'the spare, before the next idle poll (1 s)', 500);
    await until(async () => (await r.sim.stats()).spareReady, 'the new spare offered to the front end');
    heldMap.unmap();
    held.close();
    revoked.close();
  }));
