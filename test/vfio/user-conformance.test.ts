// vfio-user as the stock peers speak it (QEMU's docs/interop/vfio-user.rst,
// libvfio-user, QEMU's vfio-user-pci), message by message over real sockets:
// error-reply payloads are reason text only where devlease "error_reason"
// was negotiated; DMA_UNMAP's reply is the request's entry; GET_REGION_INFO
// sets CAPS/cap_offset only with the chain; no SPARSE_MMAP on a region that
// cannot be mmapped; a VERSION reply names only capabilities the client
// proposed. Item 1 (the client serving DMA_READ/DMA_WRITE) is
// user-conformance-dma.test.ts; the peers both use are helpers/raw-peer.ts.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  vfio_region_info,
} from '../../src/vfio/uapi/vfio.js';
import { buildRegionCaps } from '../../src/vfio/user/caps.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { encodeCommand, encodeMessage } from '../../src/vfio/user/codec.js';
import type { RegionDescription } from '../../src/vfio/user/device-model.js';
import { vfio_user_dma_map, vfio_user_dma_unmap } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { MEM_REGION, MemoryDevice, memfd } from '../fixtures/vfio-user/memory-device.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { clientOfRawServer, clientOfServer, RawPeer, rawClientOf, socketPair } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const EINVAL = 22;

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

describe('DMA_UNMAP reply', () => {
  test('"the server responds with the original DMA entry in the request": the 24 bytes as sent', async () => {
    const device = new MemoryDevice();
    const t = await rawClientOf(device);
    try {
      const mem = memfd('unmap-reply', 8192);
      const map = vfio_user_dma_map.encode({
        argsz: vfio_user_dma_map.size,
        flags: P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE,
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
