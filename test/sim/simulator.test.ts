// The real simulator through VfioUserClient, as the broker drives it: memfd
// host memory with DMA_MAP, eventfd interrupts, slice fds from the dma-buf
// feature, revoke, DMA_UNMAP with work in flight, owner disconnect.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32c } from '../../src/sim/model/crc32c.js';
import * as ds from '../../src/sim/model/datasheet.js';
import { encodeDmaBufRequest, O_RDONLY } from '../../src/sim/model/slices.js';
import { Mapping, native } from '../../src/sys/index.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_BAR4_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  vfio_device_feature_dma_buf_revoke,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { BAR0, boot, qcfg, r32, TestQueue, w32 } from './helpers/driver.js';
import { clientBus, mappingsOf, openFds, type Rig, rig, until } from './helpers/real.js';

const FW = 0x10_0000n;
const HOST = 0x20_0000n;
const STRIDE = 65536;

async function sliceFds(
  r: Rig,
  region: number,
  ranges: { offset: bigint; length: bigint }[],
  flags?: number,
) {
  const reply = await r.client.feature({
    flags: VFIO_DEVICE_FEATURE_GET,
    feature: VFIO_DEVICE_FEATURE_DMA_BUF,
    data: encodeDmaBufRequest(region, ranges, flags),
  });
  return reply.fds;
}

async function bootedRig(): Promise<Rig & { host: Awaited<ReturnType<Rig['map']>> }> {
  const r = await rig();
  const fw = await r.map(FW, 64 * 1024);
  await boot(r.bus, fw);
  return { ...r, host: await r.map(HOST, 1 << 20) };
}

test('end to end: slice-mapped queue, COPY and CRC32C, completion interrupt on the eventfd, no fd leak', async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const [pageFd] = await sliceFds(r, VFIO_PCI_BAR2_REGION_INDEX, [{ offset: 0n, length: BigInt(STRIDE) }]);
    assert.ok(pageFd);
    const page = Mapping.map(pageFd, { length: STRIDE, guard: true });
    const irq = await r.eventfd(0);
    const tq = new TestQueue(
      r.bus,
      {
        q: 0,
        mem: { iova: HOST, view: r.host.view.subarray(0, 0x1000) },
        sqSize: 16,
        cqSize: 16,
        page: page.u8,
        window: { base: HOST, size: 0x10_0000n },
      },
      STRIDE,
    );
    await tq.configure();
    const data = r.host.view.subarray(0x8000, 0x8000 + 4096);
    for (let i = 0; i < data.length; i++) data[i] = i % 251;
    await tq.submit([
      { opcode: ds.OP_COPY, length: 4096, src: HOST + 0x8000n, dst: HOST + 0x10000n, tag: 1n },
      { opcode: ds.OP_CRC32C, length: 4096, src: HOST + 0x10000n, tag: 2n, flags: ds.FLAG_INTR },
    ]);
    await until(() => irq.read() !== null, 'queue 0 interrupt on its eventfd');
    const done = await tq.reap(2);
    assert.deepEqual(
      done.map((c) => [c.tag, c.status]),
      [
        [1n, 0],
        [2n, 0],
      ],
    );
    assert.equal(done[1]?.result, crc32c(data));
    assert.equal(
      await tq.pageRead32(ds.QP_CQ_TAIL),
      2,
      'device-owned registers are visible in the mapped page',
    );
    page.unmap();
    pageFd.close();
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('a slice fd maps its own queue page or granule and cannot reach its neighbour', async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const fds = await sliceFds(r, VFIO_PCI_BAR2_REGION_INDEX, [
      { offset: 0n, length: BigInt(STRIDE) },
      { offset: BigInt(STRIDE), length: BigInt(STRIDE) },
    ]);
    assert.equal(fds.length, 2);
    const [a, b] = fds.map((f) => native.fstat(f!.fd));
    assert.equal(a?.size, STRIDE, 'the fd holds exactly one queue page');
    assert.notEqual(a?.ino, b?.ino, 'each queue page is its own object');
    const pa = Mapping.map(fds[0]!, { length: STRIDE });
    pa.u32[ds.QP_IRQ_MODE / 4] = 1;
    assert.equal(await r32(r.bus, VFIO_PCI_BAR2_REGION_INDEX, ds.QP_IRQ_MODE), 1, 'writes reach queue 0');
    assert.equal(await r32(r.bus, VFIO_PCI_BAR2_REGION_INDEX, STRIDE + ds.QP_IRQ_MODE), 0, 'not queue 1');
    // Map two pages' worth of queue 0's fd (guarded): the second page is past the object, not queue 1.
    await w32(r.bus, VFIO_PCI_BAR2_REGION_INDEX, STRIDE + ds.QP_SQ_SIZE, 0x77);
    const wide = Mapping.map(fds[0]!, { length: 2 * STRIDE, guard: true });
    assert.equal(wide.u32[(STRIDE + ds.QP_SQ_SIZE) / 4], 0, "queue 1 is unreachable through queue 0's fd");
    assert.equal(wide.isRevoked(), true, 'the access past the page faulted (caught by the guard)');
    wide.unmap();

    const g = 1 << 16;
    await r.bus.write(VFIO_PCI_BAR4_REGION_INDEX, 3 * g + 5, new Uint8Array([0xab]));
    const [gfd, g2] = await sliceFds(
      r,
      VFIO_PCI_BAR4_REGION_INDEX,
      [{ offset: BigInt(3 * g), length: BigInt(2 * g) }],
      O_RDONLY,
    );
    assert.ok(gfd && g2, 'two granules give two fds');
    assert.equal(native.fstat(gfd.fd).size, g);
    const gm = Mapping.map(gfd, { length: g, prot: 'r' });
    assert.equal(gm.u8[5], 0xab, 'granule 3 shows BAR4 offset 3*granule');
    assert.throws(
      () => Mapping.map(gfd, { length: g, prot: 'rw' }),
      { code: 'EACCES' },
      'O_RDONLY slice cannot be mapped writable',
    );
    await assert.rejects(
      sliceFds(r, VFIO_PCI_BAR2_REGION_INDEX, [{ offset: 0n, length: BigInt(2 * STRIDE) }]),
      /EINVAL/,
      'a BAR2 range must be exactly one page',
    );
    await assert.rejects(
      sliceFds(r, VFIO_PCI_BAR4_REGION_INDEX, [{ offset: BigInt(g / 2), length: BigInt(g) }]),
      /EINVAL/,
      'a BAR4 range must start on a granule',
    );
    pa.unmap();
    gm.unmap();
    for (const f of [...fds, gfd, g2]) f?.close();
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test("revoke: the old fd's guarded mapping reads as revoked; the queue is reset and runs on fresh backing", async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const probe = await r.client.feature({
      flags: VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
    });
    for (const f of probe.fds) f.close();
    const [old] = await sliceFds(r, VFIO_PCI_BAR2_REGION_INDEX, [
      { offset: BigInt(STRIDE), length: BigInt(STRIDE) },
    ]);
    const oldMap = Mapping.map(old!, { length: STRIDE, guard: true });
    const tq = new TestQueue(
      r.bus,
      {
        q: 1,
        mem: { iova: HOST, view: r.host.view.subarray(0, 0x1000) },
        sqSize: 8,
        cqSize: 8,
        page: oldMap.u8,
      },
      STRIDE,
    );
    await tq.configure();
    await tq.submit([{ opcode: ds.OP_NOP, tag: 1n }]);
    await tq.reap(1);
    // SQ_HEAD is published with CQ_TAIL after the completion's phase word (docs/SA-1.md), so a reap can see the
    // completion a moment before it: wait for it, bounded, through the old mapping.
    await until(() => oldMap.u32[ds.QP_SQ_HEAD / 4] === 1, 'SQ_HEAD 1 through the old mapping');

    // Revoke through a different description of the same memory: found by inode.
    const other = native.open(`/proc/self/fd/${old!.fd}`, native.constants.O_RDWR as number);
    await r.client.feature({
      flags: VFIO_DEVICE_FEATURE_SET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
      data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
      fds: [other],
    });
    native.close(other);
    assert.equal(oldMap.u32[ds.QP_SQ_HEAD / 4], 0, 'old mapping reads zero');
    assert.equal(oldMap.isRevoked(), true, 'and says it was revoked');
    assert.equal(native.fstat(old!.fd).size, 0, 'the old backing was truncated');
    assert.equal(await r32(r.bus, BAR0, qcfg(1, ds.Q_CTRL)), 0, 'the queue was reset');

    const [fresh] = await sliceFds(r, VFIO_PCI_BAR2_REGION_INDEX, [
      { offset: BigInt(STRIDE), length: BigInt(STRIDE) },
    ]);
    assert.notEqual(native.fstat(fresh!.fd).ino, native.fstat(old!.fd).ino, 'fresh backing');
    const freshMap = Mapping.map(fresh!, { length: STRIDE });
    const tq2 = new TestQueue(
      r.bus,
      {
        q: 1,
        mem: { iova: HOST + 0x2000n, view: r.host.view.subarray(0x2000, 0x3000) },
        sqSize: 8,
        cqSize: 8,
        page: freshMap.u8,
      },
      STRIDE,
    );
    await tq2.configure();
    await tq2.submit([{ opcode: ds.OP_NOP, tag: 9n }]);
    assert.deepEqual(
      (await tq2.reap(1)).map((c) => c.tag),
      [9n],
      'the device runs on the fresh page',
    );
    // Revoking an already-revoked fd is a no-op; an fd that is no slice is ENOENT.
    await r.client.feature({
      flags: VFIO_DEVICE_FEATURE_SET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
      data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
      fds: [old!],
    });
    await assert.rejects(
      r.client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
        fds: [r.host.memfd.fd],
      }),
      /ENOENT/,
    );
    oldMap.unmap();
    freshMap.unmap();
    old!.close();
    fresh!.close();
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('DMA_UNMAP with a descriptor in flight: answered only once the device dropped its mapping; IOMMU_FAULT', async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const victim = await r.map(0x80_0000n, 0x1_0000);
    const fault = await r.eventfd(4);
    assert.equal(mappingsOf(victim.name), 2, 'the test and the device both map the victim');
    const tq = new TestQueue(
      r.bus,
      {
        q: 0,
        mem: { iova: HOST, view: r.host.view.subarray(0, 0x1000) },
        sqSize: 8,
        cqSize: 8,
        window: { base: HOST, size: 0x100_0000n },
      },
      STRIDE,
    );
    await tq.configure();
    r.sim.setDescriptorDelay(300, 0);
    await tq.submit([{ opcode: ds.OP_COPY, length: 64, src: victim.iova, dst: HOST + 0x8000n, tag: 1n }]);
    await until(async () => (await r32(r.bus, BAR0, qcfg(0, ds.Q_INFLIGHT))) === 1, 'descriptor in flight');
    await r.client.dmaUnmap({ iova: victim.iova, size: 0x1_0000 });
    assert.equal(
      mappingsOf(victim.name),
      1,
      'when DMA_UNMAP returns the device holds no mapping of the memory',
    );
    const [c] = await tq.reap(1);
    assert.deepEqual([c?.tag, c?.status], [1n, ds.ST_IOMMU_FAULT]);
    await until(() => fault.read() !== null, 'fault vector eventfd');
    await assert.rejects(r.client.dmaUnmap({ iova: victim.iova, size: 0x1_0000 }), /ENOENT/);
    await assert.rejects(r.map(HOST + 0x1000n, 4096), /EEXIST/, 'overlapping map refused');
    await assert.rejects(
      r.client.dmaMap({ fd: victim.memfd.fd, iova: 0x123n, size: 4096, flags: 3 }),
      /EINVAL/,
    );
    await assert.rejects(
      r.client.dmaMap({ fd: victim.memfd.fd, iova: 2n ** 48n - 4096n, size: 8192, flags: 3 }),
      /EINVAL/,
      'past the 48-bit space',
    );
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('hang injection fires the ERR eventfd; VFIO_USER_DEVICE_RESET recovers', async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const err = await r.eventfd(0, VFIO_PCI_ERR_IRQ_INDEX);
    r.sim.injectHang();
    await until(() => err.read() !== null, 'ERR interrupt');
    assert.equal((await r32(r.bus, BAR0, ds.REG_STATUS)) & ds.STATUS_HUNG, ds.STATUS_HUNG);
    await r.client.reset();
    assert.equal(await r32(r.bus, BAR0, ds.REG_STATUS), ds.STATUS_READY);
    // QEMU sends DEVICE_RESET at every machine reset and stops the VM on ERR.
    // The eventfd counts signals: after two resets and a second hang it must read 1.
    await r.client.reset();
    r.sim.injectHang();
    let count: bigint | null = null;
    await until(() => {
      count = err.read();
      return count !== null;
    }, 'ERR interrupt of the second hang');
    assert.equal(count, 1n, 'VFIO_USER_DEVICE_RESET signals no ERR; only the hang does');
    await r.client.reset();
    assert.equal(await r32(r.bus, BAR0, ds.REG_FW_STATUS), ds.FW_STATUS_NONE, 'reset unloads firmware');
    assert.equal((await r.sim.stats()).dmaMaps, 2, 'DMA mappings are kept across a device reset');
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});

test('owner disconnect drops every mapping and resets queues; firmware keeps running; one owner at a time', async () => {
  const before = openFds();
  const r = await bootedRig();
  try {
    const tq = new TestQueue(
      r.bus,
      { q: 2, mem: { iova: HOST, view: r.host.view.subarray(0, 0x1000) }, sqSize: 8, cqSize: 8 },
      STRIDE,
    );
    await tq.configure();
    await assert.rejects(
      VfioUserClient.connect(r.sim.socketPath),
      /EBUSY/,
      'a second concurrent owner is refused',
    );
    assert.equal(mappingsOf(r.host.name), 2);
    r.client.close();
    await until(() => !r.sim.ownerConnected, 'owner gone');
    assert.equal(mappingsOf(r.host.name), 1, 'the device dropped its mapping of the owner memory');
    assert.equal((await r.sim.stats()).dmaMaps, 0);

    const again = await VfioUserClient.connect(r.sim.socketPath);
    try {
      const bus = clientBus(again);
      assert.equal(await r32(bus, BAR0, ds.REG_FW_STATUS), ds.FW_STATUS_RUNNING, 'firmware kept running');
      const hb = await r32(bus, BAR0, ds.REG_HEARTBEAT);
      await until(async () => (await r32(bus, BAR0, ds.REG_HEARTBEAT)) > hb, 'heartbeat advancing');
      assert.equal(await r32(bus, BAR0, qcfg(2, ds.Q_CTRL)), 0, 'queue 2 was reset');
      assert.equal(await r32(bus, VFIO_PCI_BAR2_REGION_INDEX, 2 * STRIDE + ds.QP_SQ_BASE), 0);
      await w32(bus, BAR0, ds.REG_SCRATCH, 0x5a5a);
      assert.equal(await r32(bus, BAR0, ds.REG_SCRATCH), 0x5a5a);
    } finally {
      again.close();
    }
  } finally {
    await r.close();
  }
  assert.equal(openFds(), before, 'every fd opened for the test was closed');
});
