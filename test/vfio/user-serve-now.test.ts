// A request with nothing ahead of it is served at once, in the socket's callback, when the model answers
// synchronously (connection.ts #serveNow); behind a request still in the model it waits in the queue. Both
// must answer alike: the same reply bytes, the same error reply (errno and reason) for bad input, in
// arrival order, the request's fds closed. The model here answers register reads synchronously except at
// HANG_OFFSET, which holds the queue until released.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { StreamMessage, StreamSocket } from '../../src/sys/index.js';
import { decodeMessage, encodeCommand, type VfioUserMessage } from '../../src/vfio/user/codec.js';
import type { VfioUserDeviceModel } from '../../src/vfio/user/device-model.js';
import { encodeVersion, vfio_user_region_access } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import {
  HANG_OFFSET,
  MemoryDevice,
  memfd,
  modelOf,
  REG_REGION,
} from '../fixtures/vfio-user/memory-device.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { untilRead } from '../helpers/unread.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** A MemoryDevice whose register region answers synchronously, as the simulator's front end does. */
const syncRegisters = (d: MemoryDevice): VfioUserDeviceModel =>
  modelOf(d, {
    regionRead: (index, offset, count) => {
      if (index !== REG_REGION || offset === BigInt(HANG_OFFSET)) return d.regionRead(index, offset, count);
      return d.regs.slice(Number(offset), Number(offset) + count);
    },
    regionWrite: (index, offset, data) => {
      if (index !== REG_REGION || offset !== 0n) return d.regionWrite(index, offset, data);
      if (data[0] === 0xee) throw new Error('model bug for the EIO test');
      d.regs.set(data, 0);
    },
  });

const access = (offset: bigint, region: number, count: number) =>
  vfio_user_region_access.encode({ offset, region, count });
const read = (id: number, payload: Uint8Array) => encodeCommand(id, P.VFIO_USER_REGION_READ, payload);
const write = (id: number, payload: Uint8Array) => encodeCommand(id, P.VFIO_USER_REGION_WRITE, payload);
const withData = (head: Uint8Array, data: number[]) => new Uint8Array([...head, ...data]);

/** Requests each paired with what it is: good ones and bad input (wrong count, bad region, short payload). */
const CASES: [string, (id: number) => Uint8Array, number][] = [
  ['a good read', (id) => read(id, access(0n, REG_REGION, 4)), 0],
  ['a good write', (id) => write(id, withData(access(0n, REG_REGION, 4), [1, 2, 3, 4])), 0],
  ['a read of 0 bytes', (id) => read(id, access(0n, REG_REGION, 0)), 22],
  ['a read past max_data_xfer_size', (id) => read(id, access(0n, REG_REGION, 1 << 20)), 22],
  [
    'a write whose count is not its data',
    (id) => write(id, withData(access(0n, REG_REGION, 8), [1, 2, 3, 4])),
    22,
  ],
  ['a read carrying data', (id) => read(id, withData(access(0n, REG_REGION, 4), [1, 2, 3, 4])), 22],
  ['a read of a region that does not exist', (id) => read(id, access(0n, 99, 4)), 22],
  ['a read of a region of size 0', (id) => read(id, access(0n, 1, 4)), 22],
  ['a read past the region', (id) => read(id, access(4094n, REG_REGION, 4)), 22],
  ['a read at an offset beyond 2^32', (id) => read(id, access(1n << 40n, REG_REGION, 4)), 22],
  [
    'a write the model fails (not a VfioError)',
    (id) => write(id, withData(access(0n, REG_REGION, 4), [0xee, 0, 0, 0])),
    5,
  ],
  ['a short payload', (id) => read(id, new Uint8Array(12)), 22],
  ['a write with no head', (id) => write(id, new Uint8Array(8)), 22],
];

/** A hand-driven client that asked for error reasons, so replies can be compared text and all. */
async function client(
  server: VfioUserServer,
): Promise<{ socket: StreamSocket; served: StreamSocket; next(): Promise<VfioUserMessage> }> {
  const [a, b] = vfioUserPair();
  server.serveSocket(b);
  const inbox: StreamMessage[] = [];
  const waiting: ((m: StreamMessage) => void)[] = [];
  a.on('message', (m: StreamMessage) => {
    const w = waiting.shift();
    if (w) w(m);
    else inbox.push(m);
  });
  const next = async () => {
    const m = inbox.shift() ?? (await within(new Promise<StreamMessage>((r) => waiting.push(r)), 'a reply'));
    assert.equal(m.fds.length, 0, 'no reply here carries fds');
    return decodeMessage(m.data);
  };
  const capabilities = { devlease: { error_reason: true } };
  a.send(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const v = await next();
  assert.equal(v.flags & P.VFIO_USER_F_ERROR, 0, 'VERSION accepted');
  return { socket: a, served: b, next };
}

const summary = (m: VfioUserMessage) => ({
  msgId: m.msgId,
  command: m.command,
  flags: m.flags,
  errorNo: m.errorNo,
  payload: Buffer.from(m.payload).toString('hex'),
  reason: m.flags & P.VFIO_USER_F_ERROR ? Buffer.from(m.payload).toString() : '',
});

test('a request served at once answers as the same request queued behind another', async () => {
  const models: MemoryDevice[] = [];
  const server = new VfioUserServer({
    createDevice: () => {
      const d = new MemoryDevice();
      models.push(d);
      return syncRegisters(d);
    },
    log: () => {},
  });
  try {
    const c = await client(server);
    const model = models[0] as MemoryDevice;
    /**
     * Resolves once the read of HANG_OFFSET is held in the model and the server has read the request sent behind
     * it (so that one is queued, not served at once after the release); then releases the read.
     */
    const holdThenRelease = () => {
      const inModel = new Promise<void>((resolve) => {
        model.onHang = resolve;
      });
      return async () => {
        await within(inModel, 'the read of HANG_OFFSET to reach the model');
        await untilRead(c.served.fd.fd, 'the request behind the held read');
        model.releaseHangs();
      };
    };
    let id = 10;
    for (const [what, make, errno] of CASES) {
      // One fd with it: refused (REGION_READ/WRITE take none) and closed either way.
      const fd = memfd('serve-now', 4096);
      // Nothing ahead: served at once.
      c.socket.send(make(id++), what === 'a good read' ? [] : [fd.fd]);
      const now = await c.next();
      // Behind a read the model holds: queued, answered once that one is.
      const hung = id++;
      let release = holdThenRelease();
      c.socket.send(read(hung, access(BigInt(HANG_OFFSET), REG_REGION, 4)));
      c.socket.send(make(id++), what === 'a good read' ? [] : [fd.fd]);
      fd.close();
      await release();
      assert.equal((await c.next()).msgId, hung, `${what}: replies in arrival order`);
      const queued = await c.next();
      const fdRefused = what !== 'a good read';
      const expected = fdRefused ? 22 : errno;
      assert.equal(now.errorNo, expected, `${what}: errno served at once`);
      assert.deepEqual({ ...summary(queued), msgId: 0 }, { ...summary(now), msgId: 0 }, `${what} with an fd`);
      // The same request without an fd: its own checks.
      c.socket.send(make(id++));
      const alone = await c.next();
      release = holdThenRelease();
      c.socket.send(read(id++, access(BigInt(HANG_OFFSET), REG_REGION, 4)));
      c.socket.send(make(id++));
      await release();
      await c.next();
      const behind = await c.next();
      assert.equal(alone.errorNo, errno, `${what}: errno`);
      if (errno) assert.ok(summary(alone).reason.length > 0, `${what}: a reason`);
      assert.deepEqual({ ...summary(behind), msgId: 0 }, { ...summary(alone), msgId: 0 }, what);
    }
    c.socket.close();
  } finally {
    // A read still held would keep server.close() waiting for good (after a failure).
    for (const d of models) d.releaseHangs();
    await server.close();
    for (const d of models) d.dispose();
  }
});
