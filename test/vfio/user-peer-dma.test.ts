// The server's own commands to its client, VFIO_USER_DMA_READ / DMA_WRITE (src/vfio/user/peer-dma.ts): a
// VfioUserServer listening on a real AF_UNIX path, a small model that asks for them (peerDma), and devlease's own
// VfioUserClient as the peer, whose maps without an fd are served from memory it gives (buffers or callbacks).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ERRNO, VfioError } from '../../src/errors.js';
import { MemFd } from '../../src/sys/memfd.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import type { DmaMemory } from '../../src/vfio/user/dma-maps.js';
import { vfio_user_dma_region_access } from '../../src/vfio/user/messages.js';
import { MAX_PEER_COMMANDS, type PeerDma } from '../../src/vfio/user/peer-dma.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { until } from '../helpers/broker-rig.js';
import { assertNoFdLeak, memfdFdCount, trackFdLeaks } from '../helpers/fds.js';
import { gate, gatedMemory, IOVA, LONG, PeerModel, RW, SIZE } from './helpers/peer-dma-model.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

async function setup(memory: DmaMemory | Uint8Array = new Uint8Array(SIZE)) {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-peer-dma-'));
  const logs: string[] = [];
  const models: PeerModel[] = [];
  const server = VfioUserServer.listen(join(dir, 'sock'), {
    createDevice: () => {
      const m = new PeerModel();
      models.push(m);
      return m;
    },
    log: (m) => logs.push(m),
  });
  const client = await VfioUserClient.connect(join(dir, 'sock'));
  const refused: Error[] = [];
  client.on('commandRefused', (err: Error) => refused.push(err));
  await client.dmaMap({ iova: IOVA, size: SIZE, flags: RW, memory });
  const model = models[0] as PeerModel;
  const conn = [...server.connections][0]!;
  void conn.closed.then(() => model.events.push('closed'));
  return {
    server,
    client,
    model,
    dma: model.dma as PeerDma,
    conn,
    logs,
    refused,
    async done() {
      client.close();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const pattern = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);

describe('server -> client DMA_READ / DMA_WRITE (peer-dma.ts)', () => {
  test('read returns the client bytes, write lands in its memory, up to maxTransfer in one command', () =>
    assertNoFdLeak(async () => {
      const buf = pattern(SIZE);
      const t = await setup(buf);
      try {
        assert.equal(t.dma.maxTransfer, P.DEFAULT_MAX_DATA_XFER_SIZE, "the client's max_data_xfer_size");
        assert.deepEqual(await t.dma.read(IOVA + 0x10n, 5, LONG), buf.slice(0x10, 0x15));
        const whole = await t.dma.read(IOVA, t.dma.maxTransfer, LONG);
        assert.deepEqual(whole, buf.slice(0, t.dma.maxTransfer), 'a read of maxTransfer bytes, whole');
        const text = new TextEncoder().encode('written by the device');
        await t.dma.write(IOVA + 0x1000n, text, LONG);
        assert.deepEqual(buf.slice(0x1000, 0x1000 + text.byteLength), text, "in the client's memory");
        assert.equal(t.refused.length, 0);
      } finally {
        await t.done();
      }
    }));

  test('an address outside the client maps: the errno the client answers (EFAULT); the connection stays', async () => {
    const t = await setup();
    try {
      await assert.rejects(t.dma.read(IOVA + BigInt(SIZE), 4, LONG), (err: VfioError) => {
        assert.ok(err instanceof VfioError);
        assert.equal(err.code, 'EFAULT');
        assert.equal(err.errno, ERRNO.EFAULT);
        assert.match(err.message, /VFIO_USER_DMA_READ of \[0x120000, 0x120004\)/);
        return true;
      });
      await assert.rejects(t.dma.write(0n, new Uint8Array(4), LONG), { code: 'EFAULT' });
      assert.deepEqual(await t.dma.read(IOVA, 2, LONG), new Uint8Array(2), 'served after the refusals');
    } finally {
      await t.done();
    }
  });

  test('count 0 is EINVAL, count > maxTransfer E2BIG, at once and nothing sent', async () => {
    const t = await setup();
    try {
      await assert.rejects(t.dma.read(IOVA, t.dma.maxTransfer + 1, LONG), { code: 'E2BIG' });
      await assert.rejects(t.dma.write(IOVA, new Uint8Array(t.dma.maxTransfer + 1), LONG), { code: 'E2BIG' });
      await assert.rejects(t.dma.read(IOVA, 0, LONG), { code: 'EINVAL' });
      await assert.rejects(t.dma.write(IOVA, new Uint8Array(0), LONG), { code: 'EINVAL' });
      // The client serves commands in arrival order: had any of those gone, it would have refused it first.
      await t.dma.read(IOVA, 1, LONG);
      assert.deepEqual(t.refused, [], 'the client saw no command it refused');
    } finally {
      await t.done();
    }
  });

  test(`the ${MAX_PEER_COMMANDS + 1}th outstanding command is EBUSY at once; the others complete`, async () => {
    const g = gate();
    const mem = gatedMemory(pattern(SIZE), g);
    const t = await setup(mem);
    try {
      const reads = Array.from({ length: MAX_PEER_COMMANDS }, (_, i) =>
        t.dma.read(IOVA + BigInt(i), 1, LONG),
      );
      await assert.rejects(t.dma.read(IOVA, 1, LONG), { code: 'EBUSY' });
      await assert.rejects(t.dma.write(IOVA, new Uint8Array(1), LONG), { code: 'EBUSY' });
      g.open();
      const got = await Promise.all(reads);
      assert.deepEqual(
        got.map((b) => b[0]),
        Array.from(pattern(MAX_PEER_COMMANDS)),
      );
      assert.equal(mem.calls, MAX_PEER_COMMANDS, 'the refused ones were never sent');
      assert.deepEqual(await t.dma.read(IOVA, 1, LONG), pattern(1), 'room again once answered');
    } finally {
      await t.done();
    }
  });

  test('no answer by the deadline: ETIMEDOUT; the late answer is dropped and the connection stays', async () => {
    const g = gate();
    const buf = pattern(SIZE);
    const t = await setup(gatedMemory(buf, g));
    try {
      await assert.rejects(t.dma.read(IOVA, 8, 50), (err: VfioError) => {
        assert.equal(err.code, 'ETIMEDOUT');
        assert.equal(err.errno, ERRNO.ETIMEDOUT);
        return true;
      });
      const next = t.dma.read(IOVA + 8n, 8, LONG);
      g.open(); // the late reply goes first: the client answers in arrival order
      assert.deepEqual(await next, buf.slice(8, 16), 'answered after the late reply');
      assert.equal(t.conn.closing, false);
      assert.deepEqual(
        t.logs.filter((l) => /never sent|closing/.test(l)),
        [],
      );
    } finally {
      await t.done();
    }
  });

  test("closing the client while a read waits: EPIPE, before the model's disconnected()", async () => {
    const g = gate();
    const mem = gatedMemory(new Uint8Array(SIZE), g);
    const t = await setup(mem);
    try {
      const reads = [t.dma.read(IOVA, 4, LONG), t.dma.write(IOVA, new Uint8Array(4), LONG)];
      // A model that takes a few steps of its own on the failure (a release, a log) is done before disconnected().
      const settled = reads.map(async (p) => {
        const err = await p.then(
          () => assert.fail('answered'),
          (e: VfioError) => e,
        );
        await null;
        await null;
        t.model.events.push(`rejected ${err.code}`);
      });
      await until('the client to start serving the read', () => mem.calls === 1);
      t.client.close();
      await Promise.all(settled);
      await t.conn.closed;
      assert.deepEqual(t.model.events, ['rejected EPIPE', 'rejected EPIPE', 'disconnected', 'closed']);
      await assert.rejects(t.dma.read(IOVA, 4, LONG), { code: 'EPIPE' }, 'and at once after the close');
    } finally {
      g.open();
      await t.done();
    }
  });

  test('a read issued while a REGION_WRITE is served, with requests pipelined behind it, completes', async () => {
    const buf = pattern(SIZE);
    const t = await setup(buf);
    try {
      t.model.fetchTimeoutMs = 2000; // broken, this fails with ETIMEDOUT rather than hang the file
      const doorbell = new Uint8Array(12);
      new DataView(doorbell.buffer).setBigUint64(0, IOVA + 0x40n, true);
      new DataView(doorbell.buffer).setUint32(8, 64, true);
      // More requests behind it than the server queues before it stops reading (MAX_PENDING, 32): the DMA_READ
      // reply comes after them all.
      const { write, infos } = t.client.batch(() => ({
        write: t.client.regionWrite(0, 0, doorbell),
        infos: Array.from({ length: 40 }, () => t.client.deviceInfo()),
      }));
      await write;
      assert.deepEqual(t.model.fetched, buf.slice(0x40, 0x80), 'the model got the client bytes');
      assert.equal((await Promise.all(infos)).length, 40);
    } finally {
      await t.done();
    }
  });

  test('a malformed reply fails its command alone (EPROTO); a DMA_WRITE reply may be 0, 12 or 16 bytes', async () => {
    // Replies written by hand on the client's socket, to commands the client itself never answers (its memory
    // waits): the server's msg_ids on a new connection are 0, 1, 2, ...
    const g = gate();
    const t = await setup(gatedMemory(new Uint8Array(SIZE), g));
    const head = (addr: bigint, count: bigint) => vfio_user_dma_region_access.encode({ addr, count });
    const send = (id: number, cmd: number, payload?: Uint8Array) =>
      t.client.socket.send(encodeReply(id, cmd, payload));
    try {
      const short = t.dma.read(IOVA, 4, LONG); // 0
      send(0, P.VFIO_USER_DMA_READ, head(IOVA, 4n)); // no data
      await assert.rejects(short, { code: 'EPROTO', message: /DMA_READ reply is 16 bytes, must be 16 \+ 4/ });
      const other = t.dma.read(IOVA, 4, LONG); // 1
      send(1, P.VFIO_USER_DMA_READ, new Uint8Array([...head(IOVA + 4n, 4n), 1, 2, 3, 4]));
      await assert.rejects(other, { code: 'EPROTO', message: /names address 0x100004/ });
      const wrongCmd = t.dma.read(IOVA, 4, LONG); // 2
      send(2, P.VFIO_USER_DMA_WRITE, head(IOVA, 4n));
      await assert.rejects(wrongCmd, { code: 'EPROTO' });
      const data = new Uint8Array(4);
      const w0 = t.dma.write(IOVA, data, LONG); // 3: QEMU 11.1's header alone
      send(3, P.VFIO_USER_DMA_WRITE);
      await w0;
      const w12 = t.dma.write(IOVA, data, LONG); // 4: the spec table's u32 count
      send(4, P.VFIO_USER_DMA_WRITE, head(IOVA, 4n).subarray(0, 12));
      await w12;
      const w16 = t.dma.write(IOVA, data, LONG); // 5: libvfio-user's
      send(5, P.VFIO_USER_DMA_WRITE, head(IOVA, 4n));
      await w16;
      const wBad = t.dma.write(IOVA, data, LONG); // 6
      send(6, P.VFIO_USER_DMA_WRITE, head(IOVA, 5n).subarray(0, 12));
      await assert.rejects(wBad, { code: 'EPROTO', message: /count 5/ });
      // A reply carrying an fd: malformed, and the server closes its copy (ours is closed here).
      const withFd = t.dma.read(IOVA, 1, LONG); // 7
      const stray = MemFd.create('peer-dma-reply-fd');
      try {
        t.client.socket.send(encodeReply(7, P.VFIO_USER_DMA_READ, new Uint8Array([...head(IOVA, 1n), 9])), [
          stray.fd,
        ]);
      } finally {
        stray.close();
      }
      await assert.rejects(withFd, { code: 'EPROTO', message: /carried 1 fd/ });
      await until("the server to close the reply's fd", () => memfdFdCount('peer-dma-reply-fd') === 0, 2000);
      assert.ok(t.logs.some((l) => l.includes('malformed reply to VFIO_USER_DMA_READ')));
      await t.client.deviceInfo(); // the connection stayed
      assert.equal(t.conn.closing, false);
    } finally {
      await t.done();
    }
  });

  test('a reply to no command this server sent still closes the connection; what waits fails EPIPE', async () => {
    const g = gate();
    const t = await setup(gatedMemory(new Uint8Array(SIZE), g));
    try {
      const waiting = t.dma.read(IOVA, 4, LONG); // msg_id 0
      t.client.socket.send(encodeReply(77, P.VFIO_USER_DMA_READ));
      await assert.rejects(waiting, { code: 'EPIPE' });
      assert.match(
        await t.conn.closed,
        /protocol error: reply \(msg_id 77\) to a command this server never sent/,
      );
    } finally {
      g.open();
      await t.done();
    }
  });
});
