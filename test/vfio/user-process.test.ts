// vfio-user across two processes: a forked child serves MemoryDevices on a
// socket path; this process is the client. fds (region memory, DMA memory,
// eventfds, dma-buf slices) really cross between the processes.
import assert from 'node:assert/strict';
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EventFd, MemFd } from '../../src/sys/index.js';
import { native } from '../../src/sys/native.js';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF,
  VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  vfio_device_feature_dma_buf,
  vfio_device_feature_dma_buf_revoke,
  vfio_region_dma_range,
} from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import {
  CONFIG_REGION,
  HANG_OFFSET,
  INFO_REGION,
  INFO_TEXT,
  MEM_REGION,
  MSIX_INDEX,
  REG_REGION,
} from '../fixtures/vfio-user/memory-device.js';
import { trackFdLeaks } from '../helpers/fds.js';

const CHILD = fileURLToPath(new URL('../fixtures/vfio-user/server-child.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'devlease-vfio-user-'));
const leakCheck = trackFdLeaks();
after(async () => {
  rmSync(dir, { recursive: true, force: true });
  await leakCheck();
});

async function startChild(
  name: string,
): Promise<{ child: ChildProcess; path: string; closed: Promise<unknown> }> {
  const path = join(dir, name);
  const child = fork(CHILD, [path], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const closed = once(child, 'close');
  const [msg] = (await Promise.race([
    once(child, 'message'),
    closed.then(() => {
      throw new Error('vfio-user server child exited before it was ready');
    }),
  ])) as unknown[];
  assert.equal(msg, 'ready');
  return { child, path, closed };
}

describe('vfio-user between two processes', () => {
  let srv: Awaited<ReturnType<typeof startChild>>;
  let client: VfioUserClient;

  before(async () => {
    srv = await startChild('dev.sock');
    client = await VfioUserClient.connect(srv.path);
  });

  after(async () => {
    client.close();
    srv.child.send('stop');
    await srv.closed;
  });

  test('VERSION, GET_INFO, GET_IRQ_INFO', async () => {
    assert.deepEqual(client.serverCapabilities.raw['devlease'], {
      lease: 'test',
      isolation: { mem: 'enforced' },
      error_reason: true, // the server confirms the extension this client proposed
    });
    assert.equal((await client.deviceInfo()).num_regions, 10);
    assert.equal((await client.irqInfo(MSIX_INDEX)).count, 4);
  });

  test('GET_REGION_INFO: the region fd from the other process maps the same memory', async () => {
    const r = await client.regionInfo(MEM_REGION);
    try {
      assert.equal(r.caps.sparseMmap?.length, 12);
      assert.ok(r.fd);
      await client.regionWrite(MEM_REGION, 0x3000, Buffer.from('written over the socket'));
      const buf = Buffer.alloc(23);
      native.pread(r.fd.fd, buf, 0x3000);
      assert.equal(buf.toString(), 'written over the socket');
    } finally {
      r.fd?.close();
    }
    assert.equal((await client.regionInfo(INFO_REGION)).caps.type?.subtype, 1);
    assert.equal((await client.regionRead(INFO_REGION, 0, INFO_TEXT.length)).toString(), INFO_TEXT);
  });

  test('REGION_READ / REGION_WRITE, pipelined', async () => {
    const word = (v: number) => new Uint8Array(Uint32Array.of(v).buffer);
    await Promise.all(
      Array.from({ length: 32 }, (_, i) => client.regionWrite(CONFIG_REGION, i * 4, word(i * 3))),
    );
    const back = await client.regionRead(CONFIG_REGION, 0, 128);
    for (let i = 0; i < 32; i++) assert.equal(back.readUInt32LE(i * 4), i * 3);
  });

  test('DMA_MAP with a memfd, DMA_UNMAP', async () => {
    using mem = MemFd.create('dma', { size: 0x2000 });
    await client.dmaMap({ fd: mem.fd, iova: 0x40000, size: 0x2000, flags: 3 });
    await assert.rejects(client.dmaMap({ fd: mem.fd, iova: 0x41000, size: 0x1000, flags: 3 }), {
      code: 'EEXIST',
    });
    await client.dmaUnmap({ iova: 0x40000, size: 0x2000 });
  });

  test('SET_IRQS: the other process signals our eventfd', async () => {
    using efd = new EventFd();
    await client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
      index: MSIX_INDEX,
      start: 0,
      count: 1,
      fds: [efd.fd],
    });
    await client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      index: MSIX_INDEX,
      start: 0,
      count: 1,
    });
    assert.equal(efd.read(), 1n);
  });

  test('DEVICE_RESET clears the registers', async () => {
    await client.regionWrite(REG_REGION, 0x20, Uint8Array.of(9));
    await client.reset();
    assert.deepEqual([...(await client.regionRead(REG_REGION, 0x20, 1))], [0]);
  });

  test('DEVICE_FEATURE: dma-buf slice fds come from the other process; revoke sends one back', async () => {
    const data = new Uint8Array(vfio_device_feature_dma_buf.size + vfio_region_dma_range.size);
    vfio_device_feature_dma_buf.encode({ region_index: MEM_REGION, nr_ranges: 1 }, data);
    vfio_region_dma_range.encode({ offset: 0x1000n, length: 0x1000n }, data, 16);
    const r = await client.feature({
      flags: VFIO_DEVICE_FEATURE_GET,
      feature: VFIO_DEVICE_FEATURE_DMA_BUF,
      data,
    });
    try {
      assert.equal(r.fds.length, 1);
      assert.equal(native.fstat(r.fds[0]!.fd).size, 0x1000);
      await client.feature({
        flags: VFIO_DEVICE_FEATURE_SET,
        feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
        data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 0 }),
        fds: r.fds,
      });
      await assert.rejects(
        client.feature({
          flags: VFIO_DEVICE_FEATURE_SET,
          feature: VFIO_DEVICE_FEATURE_DMA_BUF_REVOKE,
          data: vfio_device_feature_dma_buf_revoke.encode({ fd_index: 3 }),
          fds: r.fds,
        }),
        { code: 'EBADF' },
      );
    } finally {
      for (const fd of r.fds) fd.close();
    }
  });

  test('a second client on the same server gets its own device', async () => {
    await client.regionWrite(REG_REGION, 0x40, Uint8Array.of(0x55));
    const other = await VfioUserClient.connect(srv.path);
    try {
      assert.deepEqual([...(await other.regionRead(REG_REGION, 0x40, 1))], [0]);
      assert.deepEqual([...(await client.regionRead(REG_REGION, 0x40, 1))], [0x55]);
    } finally {
      other.close();
    }
  });
});

describe('a vfio-user server killed mid-request', () => {
  test('SIGKILL: the pending call rejects with ECONNRESET before its timeout, later calls too', async () => {
    const srv = await startChild('killed.sock');
    const client = await VfioUserClient.connect(srv.path, { timeoutMs: 30000 });
    const closed = once(client, 'close');
    const inModel = once(srv.child, 'message');
    const pending = client.regionRead(REG_REGION, HANG_OFFSET, 4);
    const second = client.deviceInfo(); // queued behind the hung read in the server
    assert.equal((await inModel)[0], 'hung', 'the request reached the device model');
    srv.child.kill('SIGKILL');
    await assert.rejects(pending, (err: Error & { code: string }) => {
      assert.equal(err.code, 'ECONNRESET');
      assert.match(err.message, /closed the connection/);
      return true;
    });
    await assert.rejects(second, { code: 'ECONNRESET' });
    const [reason] = (await closed) as [Error & { code: string }];
    assert.equal(reason.code, 'ECONNRESET');
    await assert.rejects(client.reset(), { code: 'ECONNRESET' });
    client.close();
    await srv.closed;
  });

  test('connecting to a path nobody serves fails with the socket error', async () => {
    await assert.rejects(VfioUserClient.connect(join(dir, 'nobody.sock')), { code: 'ENOENT' });
  });
});
