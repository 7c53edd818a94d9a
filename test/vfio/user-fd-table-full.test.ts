// A vfio-user peer whose own fd table is full (RLIMIT_NOFILE lowered for real, helpers/fd-table.ts) receiving a
// message with fds: that message fails, the connection stays. On the server, the request is refused EMFILE
// (the reason names the full table, the log says so at most a few times); on the client, the call whose reply
// carried the fds rejects EMFILE. Before, both read the kernel's MSG_CTRUNC as "more fds than max_msg_fds" and
// cut the peer off: a simulator at its limit cut off the broker and every lease went with it.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { MemFd } from '../../src/sys/index.js';
import { encodeCommand, encodeReply, errorReason } from '../../src/vfio/user/codec.js';
import { vfio_user_dma_map, vfio_user_dma_region_access } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { MemoryDevice } from '../fixtures/vfio-user/memory-device.js';
import { until } from '../helpers/broker-rig.js';
import { fillFdTable } from '../helpers/fd-table.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';
import { clientOfRawServer, rawClientOf } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

const EMFILE = 24;
const EINVAL = 22;
const FD_TABLE_FULL = /fd table of the receiving process \(pid \d+\) is full \(RLIMIT_NOFILE \d+\)/;

const dmaMap = (msgId: number, iova: bigint) =>
  encodeCommand(
    msgId,
    P.VFIO_USER_DMA_MAP,
    vfio_user_dma_map.encode({
      argsz: vfio_user_dma_map.size,
      flags: P.VFIO_USER_F_DMA_REGION_READ | P.VFIO_USER_F_DMA_REGION_WRITE,
      offset: 0n,
      addr: iova,
      size: 0x4000n,
    }),
  );

test('server: a request whose fds it cannot take is refused EMFILE, rate-limited in the log; the connection serves the next', {
  timeout: 40_000,
}, async () => {
  const device = new MemoryDevice();
  const t = await rawClientOf(device, { devlease: { error_reason: true } });
  const mem = MemFd.create('table-full-dma', { size: 0x4000 });
  try {
    const table = fillFdTable();
    const replies: Awaited<ReturnType<typeof t.peer.next>>[] = [];
    try {
      // Eight of them: the log says so five times; every one is answered.
      for (let id = 2; id < 10; id++) {
        t.peer.socket.send(dmaMap(id, 0x100000n), [mem.fd]);
        replies.push(await within(t.peer.next(), `the reply to DMA_MAP ${id}`));
      }
    } finally {
      table.restore();
    }
    for (const [i, r] of replies.entries()) {
      assert.ok(r, 'the connection is still there');
      assert.equal(r.msgId, i + 2);
      assert.ok(r.flags & P.VFIO_USER_F_ERROR, 'an error reply');
      assert.equal(r.errorNo, EMFILE);
      assert.match(errorReason(r) ?? '', FD_TABLE_FULL);
    }
    const logged = t.logs.filter((l) => /DMA_MAP \(msg_id \d+\) refused EMFILE: .*fd table/.test(l));
    assert.equal(logged.length, 5, `rate-limited: ${JSON.stringify(t.logs)}`);
    assert.ok(!t.logs.some((l) => /protocol error|closing it/.test(l)), 'nobody was cut off');
    assert.equal(device.maps.length, 0, 'the model never saw them');
    // With fds free, the same connection maps it.
    t.peer.socket.send(dmaMap(10, 0x100000n), [mem.fd]);
    const ok = await within(t.peer.next(), 'the reply to the DMA_MAP with room');
    assert.ok(ok && !(ok.flags & P.VFIO_USER_F_ERROR), `mapped: errno ${ok?.errorNo}`);
    assert.equal(device.maps.length, 1);
    // The three refusals not logged are counted in one line once the log's 10 s window is over.
    const count = 'vfio-user server: 3 more request(s) refused, their fds not received';
    await until('the count of the refusals not logged', () => t.logs.includes(count), 20_000);
  } finally {
    mem.close();
    await t.close();
  }
});

test('server: closing the server writes the count of refusals not logged at once, not after it closed', async () => {
  const t = await rawClientOf(new MemoryDevice(), { devlease: { error_reason: true } });
  const mem = MemFd.create('table-full-close', { size: 0x4000 });
  try {
    const table = fillFdTable();
    try {
      // Seven: five logged, two counted (the window's 10 s are far from over).
      for (let id = 2; id < 9; id++) {
        t.peer.socket.send(dmaMap(id, 0x100000n), [mem.fd]);
        await within(t.peer.next(), `the reply to DMA_MAP ${id}`);
      }
    } finally {
      table.restore();
    }
    const count = 'vfio-user server: 2 more request(s) refused, their fds not received';
    assert.ok(!t.logs.includes(count), 'not yet: the window is still open');
    await t.close();
    assert.equal(t.logs.filter((l) => l === count).length, 1, `written at close: ${JSON.stringify(t.logs)}`);
  } finally {
    mem.close();
    await t.close();
  }
});

test('client: a call whose reply carries fds it cannot take rejects EMFILE; the connection carries on', {
  timeout: 20_000,
}, async () => {
  const { server, client, close } = await clientOfRawServer();
  const mem = MemFd.create('table-full-reply', { size: 4096 });
  try {
    const table = fillFdTable();
    let dmaReadErrno = -1;
    try {
      const call = client.request(P.VFIO_USER_DEVICE_FEATURE, new Uint8Array(16));
      const req = await within(server.next(), 'the request');
      assert.ok(req);
      server.socket.send(encodeReply(req.msgId, req.command, new Uint8Array(16)), [mem.fd]);
      await assert.rejects(within(call, 'the call'), (err: Error & { code?: string; errno?: number }) => {
        assert.equal(err.code, 'EMFILE');
        assert.equal(err.errno, EMFILE);
        assert.match(
          err.message,
          /^VFIO_USER_DEVICE_FEATURE: the reply came, but the message's fds could not be received: /,
        );
        assert.match(err.message, FD_TABLE_FULL);
        return true;
      });
      // A command of the server's with fds it cannot take: refused as one that takes none (it takes none).
      const dmaRead = await within(
        server.command(P.VFIO_USER_DMA_READ, vfio_user_dma_region_access.encode({ addr: 0n, count: 4n }), [
          mem.fd,
        ]),
        'the DMA_READ reply',
      );
      dmaReadErrno = dmaRead.errorNo;
    } finally {
      table.restore();
    }
    assert.equal(dmaReadErrno, EINVAL);
    assert.equal(client.closed, false, 'the client kept the connection');
    // With fds free, the next reply's fd comes.
    const call = client.request(P.VFIO_USER_DEVICE_FEATURE, new Uint8Array(16));
    const req = await within(server.next(), 'the second request');
    assert.ok(req);
    server.socket.send(encodeReply(req.msgId, req.command, new Uint8Array(16)), [mem.fd]);
    const r = await within(call, 'the second call');
    assert.equal(r.fds.length, 1);
    for (const fd of r.fds) fd.close();
  } finally {
    mem.close();
    close();
  }
});
