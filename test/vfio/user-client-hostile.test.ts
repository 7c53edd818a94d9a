// The vfio-user client against a server that follows the framing but not good sense: what it may make the client
// hold (requests in flight, replies queued, fds) stays bounded, and a malformed reply leaks nothing.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ERRNO } from '../../src/errors.js';
import type { Fd, StreamMessage } from '../../src/sys/index.js';
import { COMMAND_REPLY_HIGH_WATER, MAX_COMMANDS_WAITING } from '../../src/vfio/user/channel-commands.js';
import { MAX_IN_FLIGHT } from '../../src/vfio/user/client-region-access.js';
import { decodeMessage, encodeCommand, encodeReply } from '../../src/vfio/user/codec.js';
import { vfio_user_dma_region_access } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';
import { clientOfRawServer } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a server with max_data_xfer_size 1: a 70,000-byte read is at most 64 messages in flight, and completes', async () => {
  const { server, client, close } = await clientOfRawServer({ max_data_xfer_size: 1 });
  try {
    // Answer every REGION_READ with the low byte of its offset, noting how many the client had in flight when
    // each arrived: the bound must hold while the lanes refill, not only when the read starts.
    let peak = 0;
    server.socket.removeAllListeners('message');
    server.socket.on('message', (m: StreamMessage) => {
      peak = Math.max(peak, client.pendingCount);
      for (const fd of m.fds) fd.close();
      const msg = decodeMessage(m.data);
      const head = Buffer.from(msg.payload.subarray(0, 16));
      const data = Buffer.from([Number(head.readBigUInt64LE(0) & 0xffn)]);
      server.socket.send(encodeReply(msg.msgId, msg.command, Buffer.concat([head, data])));
    });
    const count = 70_000; // more messages than there are msg_ids
    const read = client.regionRead(7, 0, count);
    assert.ok(
      client.pendingCount <= MAX_IN_FLIGHT,
      `${client.pendingCount} REGION_READs in flight at once (at most ${MAX_IN_FLIGHT})`,
    );
    const bytes = await within(read, 'the 70,000-byte read', 60_000);
    assert.ok(peak <= MAX_IN_FLIGHT, `at most ${MAX_IN_FLIGHT} in flight throughout, saw ${peak}`);
    assert.equal(bytes.length, count);
    for (let i = 0; i < count; i += 997) assert.equal(bytes[i], i & 0xff, `byte ${i}`);
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});

/** A client with 64 KiB of memory mapped for DMA at 0x100000, its server paused (it reads nothing), and the
 * highest number of bytes the client's socket ever held queued after a send. */
async function dmaClientOfDeafServer() {
  const peer = await clientOfRawServer();
  const map = peer.client.dmaMap({
    iova: 0x100000,
    size: 0x10000,
    flags: P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE,
    memory: new Uint8Array(0x10000),
  });
  await peer.server.answer(P.VFIO_USER_DMA_MAP);
  await map;
  const sock = peer.client.socket;
  const send = sock.send.bind(sock);
  const seen = { peak: 0 };
  sock.send = (data: Uint8Array, fds?: (Fd | number)[]) => {
    send(data, fds);
    seen.peak = Math.max(seen.peak, sock.queuedBytes);
  };
  peer.server.socket.pause();
  return { ...peer, seen };
}

/** n DMA_READs of the whole 64 KiB map, ids from 1000, in one write. */
const dmaReads = (n: number) =>
  Buffer.concat(
    Array.from({ length: n }, (_, i) =>
      encodeCommand(
        1000 + i,
        P.VFIO_USER_DMA_READ,
        vfio_user_dma_region_access.encode({ addr: 0x100000n, count: 0x10000n }),
      ),
    ),
  );

/** At most this many reply bytes may ever wait in the client: the high-water mark and one reply over it. */
const REPLY_BOUND = COMMAND_REPLY_HIGH_WATER + 16 + 16 + 0x10000;

test('a server that sends 64 KiB DMA_READs and reads nothing: the client holds a bounded queue, then cuts it off (EPROTO)', async () => {
  const { client, server, seen, close } = await dmaClientOfDeafServer();
  try {
    const closed = new Promise<Error | null>((resolve) => client.once('close', resolve));
    server.socket.send(dmaReads(200));
    // Before the fix every reply was queued (~13 MiB here) and the connection stayed up.
    const reason = await within(closed, 'the client closing the connection', 10_000);
    assert.equal((reason as { code?: string } | null)?.code, 'EPROTO');
    assert.match(
      String(reason),
      /server sent 33 commands without reading the replies to them \(at most 32 may wait\)/,
    );
    assert.ok(seen.peak <= REPLY_BOUND, `${seen.peak} reply bytes queued (at most ${REPLY_BOUND})`);
  } finally {
    close();
  }
});

test('a server that sends DMA_READs and reads their replies late: served as it reads, never more than 1 MiB queued', async () => {
  const { client, server, seen, close } = await dmaClientOfDeafServer();
  try {
    server.socket.send(dmaReads(MAX_COMMANDS_WAITING)); // 2 MiB of replies, more than the kernel holds
    await within(
      (async () => {
        while (client.socket.queuedBytes <= COMMAND_REPLY_HIGH_WATER)
          await new Promise((r) => setImmediate(r));
      })(),
      'the client queueing past the high-water mark',
    );
    server.socket.resume();
    for (let i = 0; i < MAX_COMMANDS_WAITING; i++) {
      const r = await server.next(5000);
      assert.ok(r && r.msgId === 1000 + i && !(r.flags & P.VFIO_USER_F_ERROR), `reply ${i}`);
      assert.equal(r.payload.byteLength, 16 + 0x10000);
    }
    assert.ok(seen.peak <= REPLY_BOUND, `${seen.peak} reply bytes queued (at most ${REPLY_BOUND})`);
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});

test('a server whose commands the client is slow to serve (its memory waits), replies read: past 32 waiting, EBUSY at once, the connection kept', async () => {
  const peer = await clientOfRawServer();
  const { client, server, close } = peer;
  try {
    let release = (): void => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    const map = client.dmaMap({
      iova: 0x100000,
      size: 0x1000,
      flags: P.VFIO_USER_F_DMA_REGION_READ,
      memory: {
        read: async (_o, n) => {
          await held;
          return new Uint8Array(n);
        },
        write: () => {},
      },
    });
    await server.answer(P.VFIO_USER_DMA_MAP);
    await map;
    const reads = Buffer.concat(
      Array.from({ length: MAX_COMMANDS_WAITING + 8 }, (_, i) =>
        encodeCommand(
          2000 + i,
          P.VFIO_USER_DMA_READ,
          vfio_user_dma_region_access.encode({ addr: 0x100000n, count: 16n }),
        ),
      ),
    );
    server.socket.send(reads);
    // The 8 past the bound are refused now, while the 32 before them still wait for the memory.
    for (let i = 0; i < 8; i++) {
      const r = await server.next(5000);
      assert.ok(r && r.flags & P.VFIO_USER_F_ERROR, `reply ${i} is an error`);
      assert.equal(r.msgId, 2000 + MAX_COMMANDS_WAITING + i);
      assert.equal(r.errorNo, ERRNO.EBUSY);
    }
    release();
    for (let i = 0; i < MAX_COMMANDS_WAITING; i++) {
      const r = await server.next(5000);
      assert.ok(r && r.msgId === 2000 + i && !(r.flags & P.VFIO_USER_F_ERROR), `reply ${i}`);
    }
    assert.equal(client.closed, false, 'the connection is kept');
  } finally {
    close();
  }
});
