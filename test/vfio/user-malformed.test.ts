// Malformed input to a VfioUserServer: each case either gets an error reply
// or closes the offending connection, while a second, well-behaved client on
// the same server keeps working. Raw messages are written byte by byte.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventFd, type StreamMessage, type StreamSocket } from '../../src/sys/index.js';
import { vfio_irq_set, vfio_region_info } from '../../src/vfio/uapi/vfio.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { decodeMessage, encodeCommand, encodeMessage, encodeReply } from '../../src/vfio/user/codec.js';
import {
  encodeVersion,
  vfio_user_device_info,
  vfio_user_dma_region_access,
  vfio_user_region_access,
} from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { CONFIG_REGION, MemoryDevice, memfd } from '../fixtures/vfio-user/memory-device.js';
import { until } from '../helpers/broker-rig.js';
import { memfdFdCount, trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** A hand-driven client: send raw bytes, await the next reply or the close. */
class RawPeer {
  readonly socket: StreamSocket;
  readonly closed: Promise<void>;
  #inbox: StreamMessage[] = [];
  #waiters: ((m: StreamMessage | null) => void)[] = [];
  #isClosed = false;

  constructor(socket: StreamSocket) {
    this.socket = socket;
    socket.on('message', (m) => {
      const w = this.#waiters.shift();
      if (w) w(m);
      else this.#inbox.push(m);
    });
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.#isClosed = true;
        for (const w of this.#waiters.splice(0)) w(null);
        resolve();
      }),
    );
  }

  /** The next message, or null if the server closed the connection; an error if neither comes within `ms`. */
  next(ms = 5000): Promise<StreamMessage | null> {
    const m = this.#inbox.shift();
    if (m) return Promise.resolve(m);
    if (this.#isClosed) return Promise.resolve(null);
    return within(new Promise((r) => this.#waiters.push(r)), 'the next message or the close', ms);
  }

  async request(bytes: Uint8Array, fds: number[] = []) {
    this.socket.send(bytes, fds);
    const m = await this.next();
    if (!m) return null;
    for (const fd of m.fds) fd.close();
    return decodeMessage(m.data);
  }

  async negotiate(): Promise<void> {
    const r = await this.request(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, {})));
    assert.ok(r && !(r.flags & P.VFIO_USER_F_ERROR), 'version accepted');
  }
}

describe('vfio-user server against malformed input', () => {
  let server: VfioUserServer;
  let good: VfioUserClient;
  const devices: MemoryDevice[] = [];
  const logs: string[] = [];

  before(async () => {
    server = new VfioUserServer({
      maxMsgFds: 2,
      createDevice: () => {
        const d = new MemoryDevice();
        devices.push(d);
        return d;
      },
      log: (m) => logs.push(m),
    });
    const [a, b] = vfioUserPair();
    server.serveSocket(b);
    good = await VfioUserClient.fromSocket(a);
  });

  after(async () => {
    good.close();
    await server.close();
    for (const d of devices) d.dispose();
  });

  async function peer(negotiate = true): Promise<RawPeer> {
    const [a, b] = vfioUserPair();
    server.serveSocket(b);
    const p = new RawPeer(a);
    if (negotiate) await p.negotiate();
    return p;
  }

  async function expectClosed(p: RawPeer, what: string): Promise<void> {
    assert.equal(await p.next(), null, `${what}: the server closed the connection`);
    p.socket.close();
    // The other client is unaffected.
    assert.equal((await good.deviceInfo()).num_regions, 10, `${what}: the other client still works`);
    assert.equal(devices[0]?.disconnectCalls, 0);
  }

  async function expectError(p: RawPeer, bytes: Uint8Array, errno: number, what: string, fds: number[] = []) {
    const r = await p.request(bytes, fds);
    assert.ok(r, `${what}: got a reply`);
    assert.ok(r.flags & P.VFIO_USER_F_ERROR, `${what}: error flag`);
    assert.equal(r.errorNo, errno, `${what}: errno`);
    assert.equal(r.payload.byteLength, 0, 'an error reply is the header only');
  }

  const info = (argsz = 16) =>
    encodeCommand(5, P.VFIO_USER_DEVICE_GET_INFO, vfio_user_device_info.encode({ argsz }));

  test('a message cut short by hang-up is dropped; the model never sees it', async () => {
    // Counted before peer(): the device is made when the connection is served, not by a request.
    const made = devices.length;
    const p = await peer();
    assert.equal(devices.length, made + 1, 'the connection made its own device');
    const device = devices[made] as MemoryDevice;
    const mem = memfd('partial', 4096);
    // The first 8 bytes of a DMA_MAP header, with its fd, then hang-up.
    p.socket.send(encodeCommand(7, P.VFIO_USER_DMA_MAP, new Uint8Array(32)).subarray(0, 8), [mem.fd]);
    mem.close();
    p.socket.close();
    await until('the model to be told of the hang-up', () => device.disconnectCalls === 1, 10_000);
    // `events` is the model's log, which disconnected() leaves alone (it empties `maps`, so maps says nothing).
    assert.deepEqual(device.events, [], 'the model was asked for nothing, a map least of all');
    assert.equal(device.disconnectReason, 'peer hung up');
    await until("the partial message's fd closed", () => memfdFdCount('partial') === 0, 2000);
    assert.equal((await good.deviceInfo()).num_regions, 10, 'the other client still works');
  });

  test('msg_size beyond the largest message accepted closes that connection at once', async () => {
    const p = await peer();
    const m = info();
    m.writeUInt32LE(0x7fff_ffff, 4);
    p.socket.send(m);
    await expectClosed(p, 'msg_size too large');
    assert.ok(logs.some((l) => /message size 2147483647 outside/.test(l)));
  });

  test('msg_size smaller than the header closes that connection', async () => {
    const p = await peer();
    const m = info();
    m.writeUInt32LE(8, 4);
    p.socket.send(m);
    await expectClosed(p, 'msg_size too small');
  });

  test('more fds than max_msg_fds closes that connection (and the fds are closed)', async () => {
    const p = await peer();
    const fds = [new EventFd(), new EventFd(), new EventFd()];
    const m = encodeCommand(9, P.VFIO_USER_DEVICE_FEATURE, new Uint8Array(8));
    p.socket.send(
      m,
      fds.map((e) => e.fd),
    );
    for (const e of fds) e.close();
    await expectClosed(p, 'too many fds');
  });

  test('a reply to an id the server never used closes that connection', async () => {
    const p = await peer();
    p.socket.send(encodeReply(77, P.VFIO_USER_DMA_READ));
    await expectClosed(p, 'stray reply');
  });

  test('a command before VERSION gets EINVAL and the connection closes', async () => {
    const p = await peer(false);
    await expectError(p, info(), 22, 'GET_INFO before VERSION');
    await expectClosed(p, 'before VERSION');
  });

  test('a VERSION with another major, or with bad JSON, is refused and closes', async () => {
    const p = await peer(false);
    await expectError(p, encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(1, 0, {})), 95, 'major 1');
    await expectClosed(p, 'major 1');
    const q = await peer(false);
    const bad = Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from('{not json\0')]);
    await expectError(q, encodeCommand(1, P.VFIO_USER_VERSION, bad), 22, 'bad JSON');
    await expectClosed(q, 'bad JSON');
  });

  test('fds on a command that takes none: EINVAL, connection kept, fds closed', async () => {
    const p = await peer();
    const mem = memfd('stray', 4096);
    await expectError(p, info(), 22, 'GET_INFO with an fd', [mem.fd]);
    mem.close();
    assert.equal((await p.request(info()))?.errorNo, 0, 'the connection still answers');
    p.socket.close();
  });

  test('unknown command: ENOSYS; refused ones (region io fds, dirty pages, write multi, migration): ENOTSUP', async () => {
    const p = await peer();
    await expectError(p, encodeCommand(20, 99), 38, 'command 99');
    await expectError(p, encodeCommand(21, 0), 38, 'command 0');
    for (const cmd of [6, 11, 12, 14, 15, 17, 18]) {
      await expectError(p, encodeCommand(22, cmd, new Uint8Array(16)), 95, P.commandName(cmd));
    }
    p.socket.close();
  });

  test('bad argsz and wrong payload sizes: EINVAL', async () => {
    const p = await peer();
    await expectError(p, info(8), 22, 'GET_INFO argsz 8');
    await expectError(
      p,
      encodeCommand(3, P.VFIO_USER_DEVICE_GET_INFO, new Uint8Array(4)),
      22,
      'GET_INFO 4 bytes',
    );
    await expectError(
      p,
      encodeCommand(3, P.VFIO_USER_DEVICE_GET_REGION_INFO, vfio_region_info.encode({ argsz: 16, index: 0 })),
      22,
      'REGION_INFO argsz 16',
    );
    const set = vfio_irq_set.encode({ argsz: 99, flags: 0x21, index: 2, start: 0, count: 1 });
    await expectError(p, encodeCommand(3, P.VFIO_USER_DEVICE_SET_IRQS, set), 22, 'SET_IRQS argsz');
    await expectError(
      p,
      encodeCommand(3, P.VFIO_USER_DEVICE_RESET, new Uint8Array(4)),
      22,
      'RESET with payload',
    );
    p.socket.close();
  });

  test('region access: count over max_data_xfer_size, out of bounds, short write payload: EINVAL', async () => {
    const p = await peer();
    const read = (offset: bigint, count: number) =>
      encodeCommand(
        4,
        P.VFIO_USER_REGION_READ,
        vfio_user_region_access.encode({ offset, region: CONFIG_REGION, count }),
      );
    await expectError(p, read(0n, 65537), 22, 'count > max');
    await expectError(p, read(255n, 2), 22, 'past the end');
    await expectError(p, read(0n, 0), 22, 'count 0');
    const w = vfio_user_region_access.encode({ offset: 0n, region: CONFIG_REGION, count: 8 });
    await expectError(p, encodeCommand(4, P.VFIO_USER_REGION_WRITE, w), 22, 'write without its data');
    await expectError(
      p,
      encodeCommand(
        4,
        P.VFIO_USER_REGION_READ,
        vfio_user_region_access.encode({ offset: 0n, region: 42, count: 1 }),
      ),
      22,
      'no such region',
    );
    p.socket.close();
  });

  test('no_reply commands get no reply, even an error', async () => {
    const p = await peer();
    p.socket.send(encodeMessage({ msgId: 5, command: 99, flags: P.VFIO_USER_F_NO_REPLY }));
    const r = await p.request(info());
    assert.equal(r?.msgId, 5, 'the next reply is for the GET_INFO (same id here), not the no_reply command');
    assert.equal(r?.command, P.VFIO_USER_DEVICE_GET_INFO);
    assert.ok(
      logs.some((l) => l.includes('(no_reply) refused: ENOSYS')),
      'the refusal was logged instead',
    );
    p.socket.close();
  });

  test('every closed connection told its model once; the good one never', async () => {
    // Hang-ups are noticed asynchronously: wait until only the good connection is left.
    await until('only the good connection to be left', () => server.connections.size <= 1, 10_000);
    for (const d of devices.slice(1)) assert.equal(d.disconnectCalls, 1);
    assert.equal(devices[0]?.disconnectCalls, 0);
    assert.ok(logs.some((l) => l.includes('message size')));
  });
});

describe('vfio-user client against a misbehaving server', () => {
  /** A hand-driven server end: answers VERSION, then does what the test says. */
  async function fakeServer() {
    const [a, b] = vfioUserPair();
    const server = new RawPeer(b);
    const connecting = VfioUserClient.fromSocket(a, { timeoutMs: 2000 });
    const hello = await server.next();
    assert.ok(hello);
    const v = decodeMessage(hello.data);
    server.socket.send(encodeReply(v.msgId, P.VFIO_USER_VERSION, encodeVersion(0, 0, {})));
    return { server, client: await connecting };
  }

  test('a reply to an id the client never used: EPROTO for every pending call, and close', async () => {
    const { server, client } = await fakeServer();
    const pending = client.deviceInfo();
    assert.ok(await server.next(), 'the server got the request');
    server.socket.send(encodeReply(4242, P.VFIO_USER_DEVICE_GET_INFO, new Uint8Array(16)));
    await assert.rejects(pending, { code: 'EPROTO' });
    assert.equal(client.closed, true);
    await server.closed;
  });

  test('a reply of the wrong command or too short: EPROTO', async () => {
    const { server, client } = await fakeServer();
    const pending = client.irqInfo(2);
    const req = await server.next();
    assert.ok(req);
    server.socket.send(
      encodeReply(decodeMessage(req.data).msgId, P.VFIO_USER_DEVICE_GET_IRQ_INFO, new Uint8Array(4)),
    );
    await assert.rejects(pending, { code: 'EPROTO' });
    await server.closed;
  });

  test('a REGION_INFO reply too short for its fixed part, with an fd: EPROTO, and the fd is closed', async () => {
    const { server, client } = await fakeServer();
    const pending = client.regionInfo(2);
    const req = await server.next();
    assert.ok(req);
    const mem = memfd('short-region-info', 4096);
    server.socket.send(
      encodeReply(decodeMessage(req.data).msgId, P.VFIO_USER_DEVICE_GET_REGION_INFO, new Uint8Array(8)),
      [mem.fd],
    );
    mem.close();
    await assert.rejects(pending, { code: 'EPROTO', message: /REGION_INFO reply is 8 bytes, needs 32/ });
    await server.closed;
    // Before the fix the fd that came with the reply stayed open in the client for good.
    await until("the reply's fd closed", () => memfdFdCount('short-region-info') === 0, 2000);
  });

  test('server-to-client DMA_READ of memory never mapped: an EFAULT error reply; the session goes on', async () => {
    const { server, client } = await fakeServer();
    const access = vfio_user_dma_region_access.encode({ addr: 0x1000n, count: 8n });
    const r = await server.request(encodeCommand(99, P.VFIO_USER_DMA_READ, access));
    assert.ok(r && r.flags & P.VFIO_USER_F_ERROR);
    assert.equal(r.errorNo, 14);
    assert.equal(r.payload.byteLength, 0, 'the error reply is the header only');
    assert.equal(r.msgId, 99);
    assert.equal(client.closed, false);
    client.close();
    await server.closed;
  });
});
