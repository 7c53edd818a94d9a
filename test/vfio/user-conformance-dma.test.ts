// vfio-user conformance, item 1: the client serves the server's DMA_READ and
// DMA_WRITE from what it mapped (QEMU's docs/interop/vfio-user.rst,
// libvfio-user), message by message over real sockets: offsets, bounds,
// permissions, maps without an fd, No_reply, and the fds it keeps. The other
// items are user-conformance.test.ts; the peers both use are helpers/raw-peer.ts.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import type { Fd } from '../../src/sys/fd.js';
import { native } from '../../src/sys/native.js';
import {
  encodeErrorReply,
  encodeMessage,
  encodeReply,
  type VfioUserMessage,
} from '../../src/vfio/user/codec.js';
import { vfio_user_dma_region_access } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { memfd } from '../fixtures/vfio-user/memory-device.js';
import { assertNoFdLeak, memfdFdCount, trackFdLeaks } from '../helpers/fds.js';
import { clientOfRawServer } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const R = P.VFIO_USER_F_DMA_REGION_READ;
const W = P.VFIO_USER_F_DMA_REGION_WRITE;
const EPERM = 1;
const ENOENT = 2;
const EFAULT = 14;
const EINVAL = 22;

const access = (addr: bigint, count: bigint | number) =>
  vfio_user_dma_region_access.encode({ addr, count: BigInt(count) });

function dmaWrite(addr: bigint, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + data.byteLength);
  out.set(access(addr, data.byteLength));
  out.set(data, 16);
  return out;
}

function expectErrno(r: VfioUserMessage, errno: number, what: string): void {
  assert.ok(r.flags & P.VFIO_USER_F_ERROR, `${what}: an error reply`);
  assert.equal(r.errorNo, errno, `${what}: errno`);
  assert.equal(r.payload.byteLength, 0, `${what}: the error reply is the header only`);
}

function readFile(fd: Fd, offset: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  native.pread(fd.fd, b, offset);
  return b;
}

describe('server-to-client DMA_READ / DMA_WRITE (item 1)', () => {
  test('served from an fd-backed map at its file offset, after the caller closed its fd', async () => {
    const { server, client, close } = await clientOfRawServer({ max_data_xfer_size: 65536 });
    const mem = memfd('dma-rw', 0x4000);
    try {
      const mapping = client.dmaMap({ fd: mem, offset: 0x1000, iova: 0x10000, size: 0x2000, flags: R | W });
      const map = await server.answer(P.VFIO_USER_DMA_MAP);
      assert.equal(map.fdCount, 1);
      await mapping;
      const text = Buffer.from('written by the device');
      const wrote = await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x10010n, text));
      assert.equal(wrote.flags & P.VFIO_USER_F_ERROR, 0);
      // The reply is libvfio-user's struct vfio_user_dma_region_access head: address and u64 count.
      assert.deepEqual(vfio_user_dma_region_access.decode(wrote.payload), {
        addr: 0x10010n,
        count: BigInt(text.byteLength),
      });
      assert.equal(wrote.payload.byteLength, 16);
      assert.equal(readFile(mem, 0x1010, text.byteLength).toString(), text.toString(), 'at offset + 0x10');
      native.pwrite(mem.fd, Buffer.from('from the client'), 0x2ff1); // the map's last 15 bytes
      const read = await server.command(P.VFIO_USER_DMA_READ, access(0x11ff1n, 15));
      assert.equal(read.flags & P.VFIO_USER_F_ERROR, 0);
      assert.deepEqual(vfio_user_dma_region_access.decode(read.payload), { addr: 0x11ff1n, count: 15n });
      assert.equal(Buffer.from(read.payload.subarray(16)).toString(), 'from the client');
      // The client keeps its own duplicate: the caller's fd is not needed any more.
      mem.close();
      const again = await server.command(P.VFIO_USER_DMA_READ, access(0x10010n, text.byteLength));
      assert.equal(Buffer.from(again.payload.subarray(16)).toString(), text.toString());
    } finally {
      mem.close();
      close();
    }
  });

  test('bounds, sizes and shapes: EFAULT outside one map, EINVAL for bad counts and payloads', async () => {
    const { server, client, close } = await clientOfRawServer();
    const mem = memfd('dma-bounds', 0x2000);
    try {
      const mapping = client.dmaMap({ fd: mem, iova: 0x10000, size: 0x2000, flags: R | W });
      await server.answer(P.VFIO_USER_DMA_MAP);
      await mapping;
      const read = (addr: bigint, n: number) => server.command(P.VFIO_USER_DMA_READ, access(addr, n));
      expectErrno(await read(0xf000n, 8), EFAULT, 'below the map');
      expectErrno(await read(0x11ffcn, 8), EFAULT, 'running past the end of the map');
      expectErrno(await read(0x12000n, 1), EFAULT, 'just past the map');
      expectErrno(await read(0xfffffffffffffff8n, 8), EFAULT, 'at the top of the address space');
      expectErrno(await read(0x10000n, 0), EINVAL, 'count 0');
      expectErrno(await read(0x10000n, 65537), EINVAL, 'count over our max_data_xfer_size');
      const long = new Uint8Array(20);
      long.set(access(0x10000n, 4));
      expectErrno(await server.command(P.VFIO_USER_DMA_READ, long), EINVAL, 'DMA_READ with trailing bytes');
      const short = dmaWrite(0x10000n, new Uint8Array(8)).subarray(0, 20);
      expectErrno(await server.command(P.VFIO_USER_DMA_WRITE, short), EINVAL, 'DMA_WRITE missing data');
      expectErrno(await server.command(P.VFIO_USER_DMA_WRITE, new Uint8Array(8)), EINVAL, 'short head');
      // A command carrying fds: EINVAL, and the fds do not stay open in the client.
      await assertNoFdLeak(async () => {
        const stray = memfd('stray', 4096);
        try {
          expectErrno(
            await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 4), [stray]),
            EINVAL,
            'fds',
          );
        } finally {
          stray.close();
        }
      });
      // A command that is not server-to-client: ENOTSUP; the connection goes on.
      expectErrno(await server.command(P.VFIO_USER_REGION_READ, new Uint8Array(16)), 95, 'REGION_READ');
      assert.equal((await read(0x10000n, 4)).flags & P.VFIO_USER_F_ERROR, 0, 'still served');
      assert.equal(client.closed, false);
    } finally {
      mem.close();
      close();
    }
  });

  test('permissions follow the map flags: EPERM, and the memory stays as it was', async () => {
    const { server, client, close } = await clientOfRawServer();
    const mem = memfd('dma-perm', 0x2000);
    try {
      native.pwrite(mem.fd, Buffer.from('keep'), 0);
      const maps = Promise.all([
        client.dmaMap({ fd: mem, offset: 0, iova: 0x10000, size: 0x1000, flags: R }),
        client.dmaMap({ fd: mem, offset: 0x1000, iova: 0x20000, size: 0x1000, flags: W }),
      ]);
      await server.answer(P.VFIO_USER_DMA_MAP);
      await server.answer(P.VFIO_USER_DMA_MAP);
      await maps;
      const w = await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x10000n, Buffer.from('gone')));
      expectErrno(w, EPERM, 'DMA_WRITE into a read-only map');
      assert.equal(readFile(mem, 0, 4).toString(), 'keep');
      const r = await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 4));
      assert.equal(Buffer.from(r.payload.subarray(16)).toString(), 'keep', 'reading it is allowed');
      expectErrno(await server.command(P.VFIO_USER_DMA_READ, access(0x20000n, 4)), EPERM, 'write-only map');
      const ok = await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x20000n, Buffer.from('okay')));
      assert.equal(ok.flags & P.VFIO_USER_F_ERROR, 0);
      assert.equal(readFile(mem, 0x1000, 4).toString(), 'okay');
    } finally {
      mem.close();
      close();
    }
  });

  test('the file behind a map is never grown: past its end is EFAULT', async () => {
    const { server, client, close } = await clientOfRawServer();
    const mem = memfd('dma-short-file', 0x1000); // the map says 0x2000
    try {
      const mapping = client.dmaMap({ fd: mem, iova: 0x10000, size: 0x2000, flags: R | W });
      await server.answer(P.VFIO_USER_DMA_MAP);
      await mapping;
      const w = await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x10ffcn, new Uint8Array(8)));
      expectErrno(w, EFAULT, 'DMA_WRITE across the end of the file');
      assert.equal(native.fstat(mem.fd).size, 0x1000, 'the file did not grow');
      expectErrno(
        await server.command(P.VFIO_USER_DMA_READ, access(0x11000n, 8)),
        EFAULT,
        'DMA_READ past it',
      );
    } finally {
      mem.close();
      close();
    }
  });

  test('maps without an fd: served from the memory given, EFAULT without any', async () => {
    const { server, client, close } = await clientOfRawServer();
    try {
      const buffer = new Uint8Array(0x1000);
      const log: string[] = [];
      const callbacks = {
        read: async (offset: bigint, count: number) => {
          log.push(`read ${offset} ${count}`);
          return new Uint8Array(count).fill(0xab);
        },
        write: (offset: bigint, data: Uint8Array) => {
          log.push(`write ${offset} ${data.byteLength}`);
        },
      };
      const maps = Promise.all([
        client.dmaMap({ iova: 0x10000, size: 0x1000, flags: R | W, memory: buffer }),
        client.dmaMap({ iova: 0x20000, size: 0x1000, flags: R | W, memory: callbacks }),
        client.dmaMap({ iova: 0x30000, size: 0x1000, flags: R | W }),
      ]);
      for (let i = 0; i < 3; i++) assert.equal((await server.answer(P.VFIO_USER_DMA_MAP)).fdCount, 0);
      await maps;
      const w = await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x10100n, Buffer.from('buffered')));
      assert.equal(w.flags & P.VFIO_USER_F_ERROR, 0);
      assert.equal(Buffer.from(buffer.subarray(0x100, 0x108)).toString(), 'buffered');
      const r = await server.command(P.VFIO_USER_DMA_READ, access(0x10100n, 8));
      assert.equal(Buffer.from(r.payload.subarray(16)).toString(), 'buffered');
      const r2 = await server.command(P.VFIO_USER_DMA_READ, access(0x20010n, 3));
      assert.deepEqual([...r2.payload.subarray(16)], [0xab, 0xab, 0xab]);
      await server.command(P.VFIO_USER_DMA_WRITE, dmaWrite(0x20020n, new Uint8Array(5)));
      assert.deepEqual(log, ['read 16 3', 'write 32 5']);
      expectErrno(
        await server.command(P.VFIO_USER_DMA_READ, access(0x30000n, 4)),
        EFAULT,
        'nothing behind it',
      );
      await assert.rejects(client.dmaMap({ iova: 0x40000, size: 0x2000, flags: R, memory: buffer }), {
        code: 'ERR_DEVLEASE_INVALID_ARG',
      });
    } finally {
      close();
    }
  });

  test("a map's memory that fails with a Node system error (negative errno) is answered with that errno; later commands are served", async () => {
    const { server, client, close } = await clientOfRawServer();
    try {
      let fail = true;
      const memory = {
        read: async (_offset: bigint, count: number) => {
          // A real fs error, as an embedder's file-backed memory would throw: errno -2 in libuv's form.
          if (fail) readFileSync('/nonexistent/devlease-dma-memory');
          return new Uint8Array(count).fill(0x5a);
        },
        write: () => {},
      };
      const map = client.dmaMap({ iova: 0x10000, size: 0x1000, flags: R | W, memory });
      await server.answer(P.VFIO_USER_DMA_MAP);
      await map;
      expectErrno(await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 4)), ENOENT, 'the fs error');
      fail = false;
      const r = await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 4));
      assert.equal(
        r.flags & P.VFIO_USER_F_ERROR,
        0,
        'the next DMA_READ is served (before: stalled for good)',
      );
      assert.deepEqual([...r.payload.subarray(16)], [0x5a, 0x5a, 0x5a, 0x5a]);
    } finally {
      close();
    }
  });

  test('No_reply DMA_WRITE is applied without a reply; commands are served in arrival order', async () => {
    const { server, client, close } = await clientOfRawServer();
    try {
      const buffer = new Uint8Array(0x1000);
      const mapping = client.dmaMap({ iova: 0x10000, size: 0x1000, flags: R | W, memory: buffer });
      await server.answer(P.VFIO_USER_DMA_MAP);
      await mapping;
      server.socket.send(
        encodeMessage({
          msgId: 1,
          command: P.VFIO_USER_DMA_WRITE,
          flags: P.VFIO_USER_F_TYPE_COMMAND | P.VFIO_USER_F_NO_REPLY,
          payload: dmaWrite(0x10000n, Buffer.from('first')),
        }),
      );
      const r = await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 5));
      assert.equal(Buffer.from(r.payload.subarray(16)).toString(), 'first');
      assert.ok(await server.quiet(), 'nothing but that reply came');
    } finally {
      close();
    }
  });

  test('unmap, a refused map and close forget the map and close its fd', async () => {
    const { server, client, close } = await clientOfRawServer();
    const mem = memfd('dma-unmap', 0x2000);
    /** Open descriptors of this process on that memfd (ours is one). */
    const copies = () => memfdFdCount('dma-unmap');
    const map = async () => {
      const mapping = client.dmaMap({ fd: mem, iova: 0x10000, size: 0x2000, flags: R | W });
      await server.answer(P.VFIO_USER_DMA_MAP);
      await mapping;
    };
    try {
      await map();
      assert.equal(client.dmaMapCount, 1);
      assert.equal(copies(), 2, 'the client holds a duplicate while mapped');
      const unmapping = client.dmaUnmap({ iova: 0x10000, size: 0x2000 });
      const u = await server.next();
      assert.ok(u);
      server.socket.send(encodeReply(u.msgId, P.VFIO_USER_DMA_UNMAP, u.payload));
      await unmapping;
      assert.equal(client.dmaMapCount, 0);
      assert.equal(copies(), 1, 'unmap closed it');
      expectErrno(await server.command(P.VFIO_USER_DMA_READ, access(0x10000n, 4)), EFAULT, 'after unmap');

      const refused = client.dmaMap({ fd: mem, iova: 0x10000, size: 0x2000, flags: R | W });
      const m = await server.next();
      assert.ok(m);
      server.socket.send(encodeErrorReply(m.msgId, P.VFIO_USER_DMA_MAP, 17 /* EEXIST */));
      await assert.rejects(refused, { code: 'EEXIST' });
      assert.equal(client.dmaMapCount, 0);
      assert.equal(copies(), 1, 'a refused map keeps nothing');

      await map();
      const all = client.dmaUnmap({ iova: 0, size: 0, flags: P.VFIO_DMA_UNMAP_FLAG_ALL });
      const ua = await server.next();
      assert.ok(ua);
      server.socket.send(encodeReply(ua.msgId, P.VFIO_USER_DMA_UNMAP, ua.payload));
      await all;
      assert.equal(copies(), 1, 'unmap-all closed it');

      await map();
      close();
      assert.equal(client.dmaMapCount, 0);
      assert.equal(copies(), 1, 'closing the client closed it');
    } finally {
      mem.close();
      close();
    }
  });
});
