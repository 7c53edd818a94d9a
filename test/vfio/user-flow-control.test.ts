// A client that pipelines requests and never reads its replies costs the
// server a bounded amount: reading stops at the high-water mark, the reply
// backlog stays under a fixed bound, other clients keep being served, and the
// client gets every reply, in order, once it reads again.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { StreamMessage, StreamSocket } from '../../src/sys/index.js';
import { vfio_region_info } from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { decodeMessage, encodeCommand } from '../../src/vfio/user/codec.js';
import {
  MAX_PENDING,
  REPLY_FDS_HIGH_WATER,
  REPLY_HIGH_WATER,
  type VfioUserConnection,
} from '../../src/vfio/user/connection.js';
import { encodeVersion, vfio_user_region_access } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { MEM_REGION, MemoryDevice } from '../fixtures/vfio-user/memory-device.js';
import { until } from '../helpers/broker-rig.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** A server of MemoryDevices, and a client past VERSION (proposing `caps`) that from now on reads nothing. */
async function neverReadingClient(caps: Record<string, unknown>) {
  const devices: MemoryDevice[] = [];
  const server = new VfioUserServer({
    createDevice: () => {
      const d = new MemoryDevice();
      devices.push(d);
      return d;
    },
    log: () => {},
  });
  const [a, b] = vfioUserPair();
  const conn = server.serveSocket(b);
  const got: StreamMessage[] = [];
  a.on('message', (m: StreamMessage) => got.push(m));
  a.send(encodeCommand(0, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities: caps })));
  await until('the VERSION reply', () => got.length >= 1);
  a.pause();
  return { devices, server, conn, a, b, got };
}

/**
 * Resolves once the server has stopped reading the never-reading client for good: every request it read is
 * answered and its reply handed to the socket (idle()), and flow control, run after the last of them, left its
 * end paused. With no request pending, what holds it paused is the reply backlog (bytes or fds), which a client
 * that reads nothing never shrinks. (A pause at MAX_PENDING alone lifts as those requests are answered, so
 * `paused` is read only once the connection is idle.)
 */
async function untilServerStopsReading(conn: VfioUserConnection, b: StreamSocket): Promise<void> {
  await until(
    'the server to stop reading the client',
    async () => {
      await conn.idle();
      return b.paused;
    },
    30_000,
  );
}

test('a never-reading client is paused at the high-water mark; it gets every reply once it reads', {
  timeout: 60_000,
}, async () => {
  const { devices, server, conn, a, b, got } = await neverReadingClient({});

  const N = 2000;
  const COUNT = 4096;
  for (let i = 1; i <= N; i++) {
    const req = vfio_user_region_access.encode({ offset: 0n, region: MEM_REGION, count: COUNT });
    a.send(encodeCommand(i & 0xffff, P.VFIO_USER_REGION_READ, req));
  }
  // Let the server work until it stops on its own.
  await untilServerStopsReading(conn, b);
  const reply = 16 + 16 + COUNT;
  assert.ok(conn.socket.queuedBytes > 0, 'replies are waiting for the client');
  assert.ok(
    conn.socket.queuedBytes <= REPLY_HIGH_WATER + MAX_PENDING * reply,
    `reply backlog ${conn.socket.queuedBytes} is bounded by ${REPLY_HIGH_WATER + MAX_PENDING * reply}`,
  );
  assert.ok(a.queuedBytes > 0, 'the server stopped reading: the client cannot write everything');
  assert.equal(conn.closing, false, 'paused, not cut off');

  // Another client of the same server is served meanwhile.
  const [c, d] = vfioUserPair();
  server.serveSocket(d);
  const good = await VfioUserClient.fromSocket(c);
  assert.ok((await good.deviceInfo()).num_regions > 0);
  good.close();

  a.resume();
  await until(`all ${N} replies`, () => got.length >= N + 1, 30_000);
  const ids = got.slice(1).map((m) => decodeMessage(m.data).msgId);
  assert.deepEqual(
    ids,
    Array.from({ length: N }, (_, i) => (i + 1) & 0xffff),
    'every reply, in order',
  );
  assert.ok(
    got
      .slice(1)
      .every((m) => m.data.length === reply && (decodeMessage(m.data).flags & P.VFIO_USER_F_ERROR) === 0),
  );
  a.close();
  await server.close();
  for (const dev of devices) dev.dispose();
});

test('a never-reading client asking for a region fd over and over is paused at the fd high-water mark, not the byte one', {
  timeout: 60_000,
}, async () => {
  const { devices, server, conn, a, b, got } = await neverReadingClient({ max_msg_fds: 16 });
  // Each reply is small and carries a dup of the region's memfd: bytes alone would let thousands queue.
  const N = 2000;
  for (let i = 1; i <= N; i++) {
    const req = vfio_region_info.encode({
      argsz: 256,
      flags: 0,
      index: MEM_REGION,
      cap_offset: 0,
      size: 0n,
      offset: 0n,
    });
    a.send(encodeCommand(i & 0xffff, P.VFIO_USER_DEVICE_GET_REGION_INFO, req));
  }
  await untilServerStopsReading(conn, b);
  const fds = conn.socket.queuedFds ?? 0;
  assert.ok(fds > 0, 'replies with fds are waiting for the client');
  assert.ok(
    fds <= REPLY_FDS_HIGH_WATER + MAX_PENDING,
    `fds held for unread replies: ${fds}, bounded by ${REPLY_FDS_HIGH_WATER + MAX_PENDING}`,
  );
  assert.equal(conn.closing, false, 'paused, not cut off');
  a.resume();
  await until(`all ${N} replies`, () => got.length >= N + 1, 30_000);
  for (const m of got) for (const f of m.fds) f.close();
  assert.equal(conn.socket.queuedFds, 0, 'all sent');
  a.close();
  await server.close();
  for (const dev of devices) dev.dispose();
});
