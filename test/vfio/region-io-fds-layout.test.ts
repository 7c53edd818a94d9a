// GET_REGION_IO_FDS entries as the servers that send them lay them out. The spec's entry is 40 bytes and "not
// to be relied on"; libvfio-user's vfio_user_sub_region_ioeventfd_t is 48 (shadow_mem_fd_index where the spec
// has padding, then shadow_offset, then datamatch at 40). The client reads entries at the reply's own stride,
// keeps the ioeventfd ones (a shadow ioeventfd needs memory of another fd it does not use) and refuses a stride
// that is neither. Before, it read every reply at 40 bytes: from libvfio-user's second entry on, offset, size
// and fd_index came from the wrong bytes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventFd } from '../../src/sys/index.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import * as P from '../../src/vfio/user/protocol.js';
import {
  VFIO_USER_IO_FD_TYPE_IOEVENTFD,
  VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW,
} from '../../src/vfio/user/region-io-fds.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { clientOfRawServer } from './helpers/raw-peer.js';

interface Entry {
  offset: bigint;
  size: bigint;
  fdIndex: number;
  type: number;
  flags: number;
  shadowFdIndex?: number;
  shadowOffset?: bigint;
  datamatch: bigint;
}

/** A reply: head { argsz, flags, index, count }, then entries of `stride` bytes (40: spec; 48: libvfio-user). */
function reply(index: number, stride: number, entries: Entry[]): Buffer {
  const b = Buffer.alloc(16 + stride * entries.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(0, 4);
  b.writeUInt32LE(index, 8);
  b.writeUInt32LE(entries.length, 12);
  entries.forEach((e, i) => {
    const at = 16 + i * stride;
    b.writeBigUInt64LE(e.offset, at);
    b.writeBigUInt64LE(e.size, at + 8);
    b.writeUInt32LE(e.fdIndex, at + 16);
    b.writeUInt32LE(e.type, at + 20);
    b.writeUInt32LE(e.flags, at + 24);
    if (stride === 48) {
      b.writeUInt32LE(e.shadowFdIndex ?? 0, at + 28);
      b.writeBigUInt64LE(e.shadowOffset ?? 0n, at + 32);
      b.writeBigUInt64LE(e.datamatch, at + 40);
    } else {
      b.writeBigUInt64LE(e.datamatch, at + 32);
    }
  });
  return b;
}

const ENTRIES: Entry[] = [
  { offset: 0x1000n, size: 4n, fdIndex: 0, type: VFIO_USER_IO_FD_TYPE_IOEVENTFD, flags: 1, datamatch: 7n },
  {
    offset: 0x2000n,
    size: 4n,
    fdIndex: 1,
    type: VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW,
    flags: 0,
    shadowFdIndex: 1,
    shadowOffset: 0x40n,
    datamatch: 0n,
  },
  { offset: 0x3000n, size: 8n, fdIndex: 1, type: VFIO_USER_IO_FD_TYPE_IOEVENTFD, flags: 1, datamatch: 9n },
];

for (const [who, stride] of [
  ['the spec (40-byte entries)', 40],
  ['libvfio-user (48-byte entries, datamatch at 40)', 48],
] as const) {
  test(`GET_REGION_IO_FDS from ${who}: every entry read where it is, the ioeventfd ones kept`, async () => {
    const leaks = trackFdLeaks();
    const { server, client, close } = await clientOfRawServer({ max_msg_fds: 8 });
    const fds = [new EventFd(), new EventFd()];
    try {
      const asked = client.regionIoFds(2, { argsz: 16 + 48 * 8 });
      const req = await server.next();
      assert.ok(req);
      assert.equal(req.command, P.VFIO_USER_DEVICE_GET_REGION_IO_FDS);
      server.socket.send(
        encodeReply(req.msgId, req.command, reply(2, stride, ENTRIES)),
        fds.map((f) => f.fd),
      );
      const got = await asked;
      assert.deepEqual(
        got.subRegions.map((s) => [s.offset, s.size, s.fdIndex, s.datamatch]),
        [
          [0x1000n, 4n, 0, 7n],
          [0x3000n, 8n, 1, 9n],
        ],
      );
      assert.equal(got.fds.length, 2);
      for (const f of got.fds) f.close();
    } finally {
      for (const f of fds) f.close();
      close();
    }
    await leaks();
  });
}

test('GET_REGION_IO_FDS entries of neither layout: the reply is refused (EPROTO), its fds closed', async () => {
  const leaks = trackFdLeaks();
  const { server, client, close } = await clientOfRawServer({ max_msg_fds: 8 });
  const fd = new EventFd();
  try {
    const asked = client.regionIoFds(2, { argsz: 16 + 48 * 8 });
    const req = await server.next();
    assert.ok(req);
    // 44-byte entries: the spec's 40 and 4 more bytes.
    const body = Buffer.concat([reply(2, 40, ENTRIES.slice(0, 1)), Buffer.alloc(4)]);
    body.writeUInt32LE(body.length, 0);
    server.socket.send(encodeReply(req.msgId, req.command, body), [fd.fd]);
    await assert.rejects(asked, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EPROTO');
      assert.match(err.message, /entries of 44 bytes, not 40 \(the spec\) or 48 \(libvfio-user\)/);
      return true;
    });
  } finally {
    fd.close();
    close();
  }
  await leaks();
});
