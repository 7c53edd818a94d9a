// Every vfio-user message type through a real VfioUserClient and
// VfioUserServer over a real SOCK_SEQPACKET socketpair in this process:
// real fds cross with SCM_RIGHTS and real eventfds get signalled.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { EventFd } from '../../src/sys/index.js';
import { native } from '../../src/sys/native.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  vfio_device_feature_dma_buf,
  vfio_device_feature_dma_buf_revoke,
  vfio_region_dma_range,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import {
  CONFIG_REGION,
  DEVLEASE_INFO_TYPE,
  HANG_OFFSET,
  INFO_REGION,
  INFO_TEXT,
  MEM_REGION,
  MEM_SIZE,
  MemoryDevice,
  MSIX_INDEX,
  memfd,
  REG_REGION,
  SLOW_OFFSET,
} from '../fixtures/vfio-user/memory-device.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

async function setup(opts: { maxDataXferSize?: number } = {}) {
  const devices: MemoryDevice[] = [];
  const logs: string[] = [];
  const server = new VfioUserServer({
    createDevice: () => {
      const d = new MemoryDevice();
      devices.push(d);
      return d;
    },
    log: (m) => logs.push(m),
    ...opts,
  });
  const [a, b] = vfioUserPair();
  server.serveSocket(b);
  const client = await VfioUserClient.fromSocket(a);
  const device = devices[0] as MemoryDevice;
  return {
    server,
    client,
    device,
    logs,
    async done() {
      for (const d of devices) d.releaseHangs();
      client.close();
      await server.close();
      for (const d of devices) d.dispose();
    },
  };
}

describe('vfio-user client <-> server in one process', () => {
  let t: Awaited<ReturnType<typeof setup>>;
  before(async () => {
    t = await setup();
  });
  after(async () => {
    await t.done();
  });

  test('VERSION: server capabilities, spec members and the devlease vendor key', () => {
    assert.deepEqual(t.client.version, { major: 0, minor: 0 });
    assert.equal(t.client.serverCapabilities.maxMsgFds, 16);
    assert.equal(t.client.serverCapabilities.maxDataXferSize, 65536);
    assert.equal(t.client.serverCapabilities.pgsizes, 4096);
    assert.deepEqual(t.client.serverCapabilities.raw['devlease'], {
      lease: 'test',
      isolation: { mem: 'enforced' },
      error_reason: true, // the server confirms the extension this client proposed
    });
    assert.equal(t.client.serverCapabilities.twinSocket, false);
  });

  test('DEVICE_GET_INFO', async () => {
    const info = await t.client.deviceInfo();
    assert.equal(info.num_regions, 10);
    assert.equal(info.num_irqs, 5);
    assert.ok(info.flags & VFIO_DEVICE_FLAGS_RESET);
  });

  test('DEVICE_GET_REGION_INFO: sparse mmap caps bigger than the first argsz, and the region fd', async () => {
    const r = await t.client.regionInfo(MEM_REGION);
    try {
      assert.ok(r.flags & VFIO_REGION_INFO_FLAG_MMAP);
      assert.ok(r.flags & VFIO_REGION_INFO_FLAG_CAPS);
      assert.equal(r.size, BigInt(MEM_SIZE));
      assert.equal(r.caps.sparseMmap?.length, 12);
      assert.deepEqual(r.caps.sparseMmap?.[11], { offset: 0xb000n, size: 0x1000n });
      assert.ok(r.fd, 'the mappable region came with its fd');
      // The fd is the device's memory: what we write through it, REGION_READ returns.
      native.pwrite(r.fd.fd, Buffer.from('through the fd'), 0x2000);
      const back = await t.client.regionRead(MEM_REGION, 0x2000, 14);
      assert.equal(back.toString(), 'through the fd');
    } finally {
      r.fd?.close();
    }
  });

  test('DEVICE_GET_REGION_INFO: a device-specific region with CAP_TYPE, read with REGION_READ', async () => {
    const r = await t.client.regionInfo(INFO_REGION);
    assert.equal(r.fd, null);
    assert.deepEqual(r.caps.type, { type: DEVLEASE_INFO_TYPE, subtype: 1 });
    const text = await t.client.regionRead(INFO_REGION, 0, Number(r.size));
    assert.equal(text.toString(), INFO_TEXT);
    await assert.rejects(t.client.regionWrite(INFO_REGION, 0, Buffer.from('x')), { code: 'EINVAL' });
  });

  test('DEVICE_GET_REGION_INFO: index past num_regions is EINVAL', async () => {
    await assert.rejects(t.client.regionInfo(10), { code: 'EINVAL', errno: 22 });
  });

  test('REGION_WRITE / REGION_READ round-trip, and bounds are enforced', async () => {
    await t.client.regionWrite(CONFIG_REGION, 4, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual([...(await t.client.regionRead(CONFIG_REGION, 4, 4))], [1, 2, 3, 4]);
    assert.deepEqual([...t.device.config.subarray(4, 8)], [1, 2, 3, 4]);
    await assert.rejects(t.client.regionRead(CONFIG_REGION, 250, 8), { code: 'EINVAL' });
    await assert.rejects(t.client.regionRead(CONFIG_REGION, 2n ** 64n - 4n, 8), { code: 'EINVAL' });
  });

  test('requests are handled in arrival order: a read pipelined after a slow write sees it', async () => {
    const write = t.client.regionWrite(REG_REGION, SLOW_OFFSET, Uint8Array.of(0xab));
    const read = t.client.regionRead(REG_REGION, SLOW_OFFSET, 1);
    await write;
    assert.deepEqual([...(await read)], [0xab]);
  });

  test('No_reply: the write is applied before the next replied request', async () => {
    await t.client.regionWrite(REG_REGION, 0x10, Uint8Array.of(7), { noReply: true });
    assert.deepEqual([...(await t.client.regionRead(REG_REGION, 0x10, 1))], [7]);
  });

  test('DMA_MAP with a memfd / overlap refused with EEXIST / DMA_UNMAP / misalignment EINVAL', async () => {
    const mem = memfd('dma', 0x4000);
    try {
      await t.client.dmaMap({ fd: mem, offset: 0, iova: 0x100000, size: 0x4000, flags: 3 });
      assert.equal(t.device.maps.length, 1);
      assert.ok(t.device.maps[0]?.fd, 'the server received the memory fd');
      await assert.rejects(t.client.dmaMap({ fd: mem, iova: 0x102000, size: 0x1000, flags: 1 }), {
        code: 'EEXIST',
        reason: 'iova 0x102000 overlaps a mapping', // the model's words, carried by devlease "error_reason"
      });
      await assert.rejects(t.client.dmaMap({ fd: mem, iova: 0x200800, size: 0x1000, flags: 1 }), {
        code: 'EINVAL',
      });
      await t.client.dmaUnmap({ iova: 0x100000, size: 0x4000 });
      assert.equal(t.device.maps.length, 0);
      await assert.rejects(t.client.dmaUnmap({ iova: 0x100000, size: 0x4000 }), { code: 'EINVAL' });
      await assert.rejects(t.client.dmaUnmap({ iova: 0, size: 0x1000, flags: 1 }), { code: 'ENOTSUP' });
    } finally {
      mem.close();
    }
  });

  test('DEVICE_GET_IRQ_INFO and SET_IRQS: an eventfd handed over is signalled by the device', async () => {
    const irq = await t.client.irqInfo(MSIX_INDEX);
    assert.equal(irq.count, 4);
    assert.ok(irq.flags & VFIO_IRQ_INFO_EVENTFD);
    const efd = new EventFd();
    try {
      await t.client.setIrqs({
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: MSIX_INDEX,
        start: 1,
        count: 1,
        fds: [efd.fd],
      });
      assert.equal(efd.read(), null, 'not signalled yet');
      await t.client.setIrqs({
        flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: MSIX_INDEX,
        start: 0,
        count: 2,
      });
      assert.equal(efd.read(), 1n, 'the device signalled the eventfd we passed');
      await assert.rejects(
        t.client.setIrqs({
          flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
          index: 2,
          start: 3,
          count: 2,
        }),
        { code: 'EINVAL' },
      );
      await assert.rejects(t.client.irqInfo(5), { code: 'EINVAL' });
    } finally {
      efd.close();
    }
  });

  test('DEVICE_RESET', async () => {
    await t.client.reset();
    assert.equal(t.device.resets, 1);
  });

  test('DEVICE_FEATURE 11 (dma-buf GET) returns one fd per range; 13 (revoke) takes an fd', async () => {
    const data = new Uint8Array(vfio_device_feature_dma_buf.size + 2 * vfio_region_dma_range.size);
    vfio_device_feature_dma_buf.encode({ region_index: MEM_REGION, nr_ranges: 2 }, data);
    vfio_region_dma_range.encode({ offset: 0n, length: 0x1000n }, data, 16);
    vfio_region_dma_range.encode({ offset: 0x1000n, length: 0x2000n }, data, 32);
    const r = await t.client.feature({
      flags: VFIO_DEVICE_FEATURE_GET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF,
      data,
    });
    try {
      assert.equal(r.fds.length, 2);
      assert.equal(native.fstat(r.fds[1]?.fd as number).size, 0x2000);
      const revoke = await t.client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 1 }),
        fds: r.fds,
      });
      assert.equal(revoke.fds.length, 0);
      assert.deepEqual(t.device.events.at(-1), 'revoke 1');
    } finally {
      for (const fd of r.fds) fd.close();
    }
  });

  test('DEVICE_FEATURE: migration features refused with ENOTSUP by the server, others by the model', async () => {
    await assert.rejects(t.client.feature({ flags: VFIO_DEVICE_FEATURE_GET, feature: 1 }), {
      code: 'ENOTSUP',
    });
    await assert.rejects(t.client.feature({ flags: VFIO_DEVICE_FEATURE_SET, feature: 2 }), {
      code: 'ENOTSUP',
    });
    await assert.rejects(t.client.feature({ flags: VFIO_DEVICE_FEATURE_GET, feature: 99 }), {
      code: 'ENOTSUP',
    });
    await assert.rejects(t.client.feature({ flags: 0, feature: 11 }), { code: 'EINVAL' });
  });

  test('a model exception that is not a VfioError becomes EIO and is logged', async () => {
    await assert.rejects(t.client.regionWrite(REG_REGION, 0, Uint8Array.of(0xee)), { code: 'EIO', errno: 5 });
    assert.ok(t.logs.some((l) => l.includes('VFIO_USER_REGION_WRITE failed')));
  });

  test('a call past its timeout rejects with ETIMEDOUT; its late reply is dropped quietly', async () => {
    await assert.rejects(t.client.regionRead(REG_REGION, HANG_OFFSET, 4, { timeoutMs: 50 }), {
      code: 'ETIMEDOUT',
    });
    t.device.releaseHangs(); // the server now sends the late reply, then serves the next request
    assert.equal((await t.client.deviceInfo()).num_irqs, 5);
    assert.equal(t.client.closed, false);
  });
});

describe('vfio-user transfers larger than max_data_xfer_size', () => {
  test('the client splits reads and writes into pipelined messages the server accepts', async () => {
    const t = await setup({ maxDataXferSize: 4096 });
    try {
      assert.equal(t.client.maxTransfer, 4096);
      const data = Buffer.alloc(MEM_SIZE, 0);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      await t.client.regionWrite(MEM_REGION, 0, data);
      const back = await t.client.regionRead(MEM_REGION, 0, MEM_SIZE);
      assert.ok(back.equals(data));
    } finally {
      await t.done();
    }
  });
});

describe('vfio-user disconnect', () => {
  test('client close: the model hears disconnected() exactly once, and its fds are released', async () => {
    const t = await setup();
    const mem = memfd('dma', 0x1000);
    await t.client.dmaMap({ fd: mem, iova: 0, size: 0x1000, flags: 3 });
    mem.close();
    const gone = once(t.server, 'disconnect');
    t.client.close();
    t.client.close();
    const [, reason] = await gone;
    assert.equal(reason, 'peer hung up');
    await t.server.close();
    assert.equal(t.device.disconnectCalls, 1);
    assert.equal(t.device.disconnectReason, 'peer hung up');
    assert.equal(t.device.maps.length, 0);
    await assert.rejects(t.client.deviceInfo(), { code: 'ECONNRESET' });
    await t.done();
  });

  test('server close: pending and later client calls reject with ECONNRESET', async () => {
    const t = await setup();
    const closed = new Promise((r) => t.client.once('close', r));
    const inModel = new Promise<void>((resolve) => {
      t.device.onHang = resolve;
    });
    const pending = t.client.regionRead(REG_REGION, HANG_OFFSET, 4);
    // The close must find the request in the model (not yet read, it would be dropped and the model told at once).
    await within(inModel, 'the read to reach the model');
    const serverClosed = t.server.close();
    await assert.rejects(within(pending, 'the pending call to settle'), { code: 'ECONNRESET' });
    const err = (await within(closed, "the client's close")) as Error & { code: string };
    assert.equal(err.code, 'ECONNRESET');
    // The model is told only once the request it is working on returns.
    assert.equal(t.device.disconnectCalls, 0);
    t.device.releaseHangs();
    await serverClosed;
    assert.equal(t.device.disconnectCalls, 1);
    await t.done();
  });
});
