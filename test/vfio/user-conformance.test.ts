// vfio-user as the stock peers speak it (QEMU's docs/interop/vfio-user.rst,
// libvfio-user, QEMU's vfio-user-pci), message by message over real sockets:
// the client serves the server's DMA_READ/DMA_WRITE from what it mapped;
// error-reply payloads are reason text only where devlease "error_reason"
// was negotiated; GET_REGION_INFO sets CAPS/cap_offset only with the chain;
// no SPARSE_MMAP on a region that cannot be mmapped; a VERSION reply names
// only capabilities the client proposed.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { Fd } from '../../src/sys/fd.js';
import type { StreamMessage, StreamSocket } from '../../src/sys/index.js';
import { native } from '../../src/sys/native.js';
import {
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  vfio_region_info,
} from '../../src/vfio/uapi/vfio.js';
import { buildRegionCaps } from '../../src/vfio/user/caps.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import {
  decodeMessage,
  encodeCommand,
  encodeErrorReply,
  encodeMessage,
  encodeReply,
  type VfioUserMessage,
} from '../../src/vfio/user/codec.js';
import type { RegionDescription } from '../../src/vfio/user/device-model.js';
import {
  decodeVersion,
  encodeVersion,
  vfio_user_dma_map,
  vfio_user_dma_region_access,
  vfio_user_dma_unmap,
} from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { MEM_REGION, MemoryDevice, memfd } from '../fixtures/vfio-user/memory-device.js';
import { assertNoFdLeak, openFds, trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const R = P.VFIO_USER_F_DMA_REGION_READ;
const W = P.VFIO_USER_F_DMA_REGION_WRITE;
const EPERM = 1;
const EFAULT = 14;
const EINVAL = 22;

/** One end of a connected vfio-user socket pair per side. */
function socketPair(): [StreamSocket, StreamSocket] {
  return vfioUserPair();
}

/** A hand-driven peer: send raw messages, read what comes back (each wait bounded). */
class RawPeer {
  #inbox: StreamMessage[] = [];
  #waiters: ((m: StreamMessage | null) => void)[] = [];
  #closed = false;
  #nextId = 0x100;

  constructor(readonly socket: StreamSocket) {
    socket.on('message', (m) => {
      const w = this.#waiters.shift();
      if (w) w(m);
      else this.#inbox.push(m);
    });
    socket.once('close', () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w(null);
    });
  }

  /** The next message (its fds closed, their count kept), or null once the peer hung up. */
  async next(timeoutMs = 2000): Promise<(VfioUserMessage & { fdCount: number }) | null> {
    const m =
      this.#inbox.shift() ??
      (this.#closed
        ? null
        : await new Promise<StreamMessage | null>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no message within ${timeoutMs} ms`)), timeoutMs);
            this.#waiters.push((msg) => {
              clearTimeout(timer);
              resolve(msg);
            });
          }));
    if (!m) return null;
    for (const fd of m.fds) fd.close();
    return { ...decodeMessage(m.data), fdCount: m.fds.length };
  }

  /** Nothing arrives within `ms`. */
  async quiet(ms = 50): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.#inbox.length === 0;
  }

  /** Send a server-to-client command and return its reply. */
  async command(command: number, payload: Uint8Array, fds: (Fd | number)[] = []) {
    const id = this.#nextId++;
    this.socket.send(encodeCommand(id, command, payload), fds);
    const r = await this.next();
    assert.ok(r, 'the client replied');
    assert.equal(r.msgId, id);
    assert.equal(r.command, command);
    return r;
  }

  /** Answer the next request (it must be `command`) with an empty reply. */
  async answer(command: number): Promise<VfioUserMessage & { fdCount: number }> {
    const m = await this.next();
    assert.ok(m, 'a request came');
    assert.equal(m.command, command);
    this.socket.send(encodeReply(m.msgId, m.command));
    return m;
  }
}

/** A VfioUserClient talking to a RawPeer that answered its VERSION with `capabilities`. */
async function clientOfRawServer(capabilities: Record<string, unknown> = {}) {
  const [a, b] = socketPair();
  const server = new RawPeer(b);
  const connecting = VfioUserClient.fromSocket(a, { timeoutMs: 2000 });
  const hello = await server.next();
  assert.ok(hello);
  server.socket.send(encodeReply(hello.msgId, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const client = await connecting;
  return {
    server,
    client,
    close() {
      client.close();
      server.socket.close();
    },
  };
}

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
    const copies = () => [...openFds().values()].filter((t) => t.startsWith('/memfd:dma-unmap')).length;
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

describe('error-reply payloads (item 2)', () => {
  // What libvfio-user sent as an error reply's payload in the field: bytes that are no text.
  const garbage = Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0);

  async function failWith(client: VfioUserClient, server: RawPeer, payload: Uint8Array) {
    const call = client.reset();
    const m = await server.next();
    assert.ok(m);
    server.socket.send(
      encodeMessage({
        msgId: m.msgId,
        command: m.command,
        flags: P.VFIO_USER_F_TYPE_REPLY | P.VFIO_USER_F_ERROR,
        errorNo: EINVAL,
        payload,
      }),
    );
    return (await call.catch((e) => e)) as Error & { code: string; errno: number; reason?: string };
  }

  test('without the extension in the VERSION reply, the payload is ignored, text or not', async () => {
    const { server, client, close } = await clientOfRawServer({
      max_msg_fds: 8,
      migration: { pgsize: 4096 },
    });
    try {
      for (const payload of [garbage, new TextEncoder().encode('looks like a reason')]) {
        const err = await failWith(client, server, payload);
        assert.equal(err.code, 'EINVAL');
        assert.equal(err.errno, EINVAL);
        assert.equal(err.reason, undefined);
        assert.equal(err.message, 'VFIO_USER_DEVICE_RESET failed: EINVAL (errno 22)');
      }
      assert.equal(client.closed, false);
    } finally {
      close();
    }
  });

  test('with devlease "error_reason" accepted, the payload is the reason; bytes that are no text are not', async () => {
    const { server, client, close } = await clientOfRawServer({ devlease: { error_reason: true } });
    try {
      const err = await failWith(client, server, new TextEncoder().encode('the device said no'));
      assert.equal(err.reason, 'the device said no');
      assert.match(err.message, /EINVAL \(errno 22\): the device said no$/);
      assert.equal((await failWith(client, server, garbage)).reason, undefined);
    } finally {
      close();
    }
  });

  test("VERSION's own error reply: the reason a devlease server gives is kept, garbage is not", async () => {
    for (const [payload, reason] of [
      [new TextEncoder().encode('lease refused by policy'), 'lease refused by policy'],
      [garbage, undefined],
    ] as const) {
      const [a, b] = socketPair();
      const server = new RawPeer(b);
      const connecting = VfioUserClient.fromSocket(a, { timeoutMs: 2000 }).catch((e) => e);
      const hello = await server.next();
      assert.ok(hello);
      server.socket.send(
        encodeMessage({
          msgId: hello.msgId,
          command: P.VFIO_USER_VERSION,
          flags: P.VFIO_USER_F_TYPE_REPLY | P.VFIO_USER_F_ERROR,
          errorNo: 13,
          payload,
        }),
      );
      const err = await connecting;
      assert.equal(err.code, 'EACCES');
      assert.equal(err.reason, reason);
      server.socket.close();
    }
  });
});

/** A MemoryDevice whose register region (not mmap-able) wrongly carries a sparse-mmap capability. */
class SparseOnUnmappable extends MemoryDevice {
  override regionInfo(index: number): RegionDescription {
    const r = super.regionInfo(index);
    if (index !== 0) return r;
    return {
      ...r,
      caps: buildRegionCaps([{ sparseMmap: [{ offset: 0n, size: r.size }] }, { type: 0x1234, subtype: 5 }]),
    };
  }
}

async function rawClientOf(device: MemoryDevice, capabilities: Record<string, unknown> = {}) {
  const logs: string[] = [];
  const server = new VfioUserServer({ createDevice: () => device, log: (m) => logs.push(m) });
  const [a, b] = socketPair();
  server.serveSocket(b);
  const peer = new RawPeer(a);
  a.send(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const v = await peer.next();
  assert.ok(v && !(v.flags & P.VFIO_USER_F_ERROR), 'version accepted');
  return {
    peer,
    logs,
    replyCapabilities: decodeVersion(v.payload).json['capabilities'] as Record<string, unknown>,
    async close() {
      a.close();
      await server.close();
      device.dispose();
    },
  };
}

describe('DMA_UNMAP reply', () => {
  test('"the server responds with the original DMA entry in the request": the 24 bytes as sent', async () => {
    const device = new MemoryDevice();
    const t = await rawClientOf(device);
    try {
      const mem = memfd('unmap-reply', 8192);
      const map = vfio_user_dma_map.encode({
        argsz: vfio_user_dma_map.size,
        flags: R | W,
        offset: 0n,
        addr: 0x10000n,
        size: 8192n,
      });
      t.peer.socket.send(encodeCommand(2, P.VFIO_USER_DMA_MAP, map), [mem.fd]);
      mem.close();
      const mapped = await t.peer.next();
      assert.ok(mapped && !(mapped.flags & P.VFIO_USER_F_ERROR), 'mapped');
      assert.equal(device.maps.length, 1);
      const request = vfio_user_dma_unmap.encode({
        argsz: vfio_user_dma_unmap.size,
        flags: 0,
        addr: 0x10000n,
        size: 8192n,
      });
      t.peer.socket.send(encodeCommand(3, P.VFIO_USER_DMA_UNMAP, request));
      const reply = await t.peer.next();
      assert.ok(reply && !(reply.flags & P.VFIO_USER_F_ERROR), 'unmapped');
      assert.equal(reply.command, P.VFIO_USER_DMA_UNMAP);
      assert.deepEqual([...reply.payload], [...request], "the reply payload is the request's DMA entry");
      assert.equal(device.maps.length, 0, 'the map is gone');
    } finally {
      await t.close();
    }
  });
});

describe('GET_REGION_INFO (items 4 and 5)', () => {
  const regionInfo = (index: number, argsz: number) =>
    encodeCommand(5, P.VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.encode({ argsz, index }));

  test('caps that do not fit argsz: the size needed, no CAPS flag, cap_offset 0, no fd', async () => {
    const t = await rawClientOf(new MemoryDevice());
    try {
      t.peer.socket.send(regionInfo(MEM_REGION, vfio_region_info.size));
      const small = await t.peer.next();
      assert.ok(small && !(small.flags & P.VFIO_USER_F_ERROR));
      assert.equal(small.payload.byteLength, vfio_region_info.size, 'only the fixed part');
      const info = vfio_region_info.decode(small.payload);
      assert.ok(info.argsz > vfio_region_info.size, 'argsz says how much is needed');
      assert.equal(info.flags & VFIO_REGION_INFO_FLAG_CAPS, 0, 'no CAPS flag without the chain');
      assert.equal(info.cap_offset, 0);
      assert.ok(info.flags & VFIO_REGION_INFO_FLAG_MMAP, 'the region is still described as mappable');
      assert.equal(small.fdCount, 0, 'the fd comes with the full reply');
      t.peer.socket.send(regionInfo(MEM_REGION, info.argsz));
      const full = await t.peer.next();
      assert.ok(full);
      const fullInfo = vfio_region_info.decode(full.payload);
      assert.equal(full.payload.byteLength, info.argsz);
      assert.ok(fullInfo.flags & VFIO_REGION_INFO_FLAG_CAPS);
      assert.equal(fullInfo.cap_offset, vfio_region_info.size);
      assert.equal(full.fdCount, 1);
    } finally {
      await t.close();
    }
  });

  test('the client retries with the argsz asked for and gets the chain', async () => {
    const t = await clientOfServer(new MemoryDevice());
    try {
      const r = await t.client.regionInfo(MEM_REGION, { argsz: vfio_region_info.size });
      assert.ok(r.fd, 'with the fd');
      r.fd.close();
      assert.equal(r.caps.sparseMmap?.length, 12);
    } finally {
      await t.close();
    }
  });

  test('a region that cannot be mmapped carries no SPARSE_MMAP capability (other caps stay)', async () => {
    const t = await rawClientOf(new SparseOnUnmappable());
    try {
      t.peer.socket.send(regionInfo(0, 4096));
      const r = await t.peer.next();
      assert.ok(r && !(r.flags & P.VFIO_USER_F_ERROR));
      const info = vfio_region_info.decode(r.payload);
      assert.equal(info.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
      assert.ok(info.flags & VFIO_REGION_INFO_FLAG_READ);
      assert.ok(info.flags & VFIO_REGION_INFO_FLAG_CAPS, 'the type capability is kept');
      const client = await clientOfServer(new SparseOnUnmappable());
      try {
        const ri = await client.client.regionInfo(0);
        assert.equal(ri.caps.sparseMmap, undefined, 'no sparse-mmap areas on a region without MMAP');
        assert.deepEqual(ri.caps.type, { type: 0x1234, subtype: 5 });
      } finally {
        await client.close();
      }
      assert.ok(
        t.logs.some((l) => /region 0 is not mmap-able .* SPARSE_MMAP/.test(l)),
        'the model bug is logged',
      );
    } finally {
      await t.close();
    }
  });
});

async function clientOfServer(device: MemoryDevice) {
  const server = new VfioUserServer({ createDevice: () => device, log: () => {} });
  const [a, b] = socketPair();
  server.serveSocket(b);
  const client = await VfioUserClient.fromSocket(a);
  return {
    client,
    async close() {
      client.close();
      await server.close();
      device.dispose();
    },
  };
}

describe('VERSION reply capabilities (item 7)', () => {
  test('a client that proposes nothing gets no capabilities back', async () => {
    const t = await rawClientOf(new MemoryDevice(), {});
    try {
      assert.deepEqual(t.replyCapabilities, {});
    } finally {
      await t.close();
    }
  });

  test("only proposed members come back; devlease's keys only to a client that proposed devlease", async () => {
    const t = await rawClientOf(new MemoryDevice(), {
      max_msg_fds: 4,
      max_data_xfer_size: 4096,
      migration: {},
    });
    try {
      assert.deepEqual(t.replyCapabilities, { max_msg_fds: 16, max_data_xfer_size: 65536 });
    } finally {
      await t.close();
    }
    const d = await rawClientOf(new MemoryDevice(), { pgsizes: 4096, devlease: {} });
    try {
      assert.deepEqual(d.replyCapabilities, {
        pgsizes: 4096,
        devlease: { lease: 'test', isolation: { mem: 'enforced' } },
      });
    } finally {
      await d.close();
    }
  });

  test("devlease's own client proposes every member it needs and gets them", async () => {
    const t = await clientOfServer(new MemoryDevice());
    try {
      const caps = t.client.serverCapabilities;
      assert.deepEqual(Object.keys(caps.raw).sort(), [
        'devlease',
        'max_data_xfer_size',
        'max_dma_maps',
        'max_msg_fds',
        'pgsizes',
      ]);
      assert.equal(caps.pgsizes, 4096);
      assert.equal(caps.maxDmaMaps, 65535);
    } finally {
      await t.close();
    }
  });

  test('the client accepts a reply with members it did not propose (libvfio-user adds "migration")', async () => {
    const { client, close } = await clientOfRawServer({
      max_msg_fds: 8,
      max_data_xfer_size: 1048576,
      migration: { pgsize: 4096 },
    });
    try {
      assert.equal(client.closed, false);
      assert.deepEqual(client.serverCapabilities.raw['migration'], { pgsize: 4096 });
      assert.equal(client.serverCapabilities.maxMsgFds, 8);
    } finally {
      close();
    }
  });
});
