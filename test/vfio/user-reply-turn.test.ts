// When a vfio-user server's replies leave (connection-replies.ts): those given in one turn of the event loop go
// at its end, together — the ones without fds in one sendmsg, one with fds alone, in order — so a client that
// pipelined its requests is woken once for the replies one event released, and a device command the model
// sends in that turn (the next pipelined request's relay) leaves before the replies. Checked on a real socket
// pair, counting the server's sendmsg calls.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Fd, native, StreamSocket } from '../../src/sys/index.js';
import { VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE } from '../../src/vfio/uapi/vfio.js';
import { decodeMessage, encodeCommand } from '../../src/vfio/user/codec.js';
import type { IrqSetRequest } from '../../src/vfio/user/device-model.js';
import { encodeIrqSet, encodeVersion } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { HEADER_SIZE } from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/transport.js';
import { MEM_REGION, MemoryDevice, MSIX_INDEX, modelOf } from '../fixtures/vfio-user/memory-device.js';
import { memfdFdCount, trackFdLeaks } from '../helpers/fds.js';
import { untilRead } from '../helpers/unread.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

function regionInfoRequest(id: number, index: number): Uint8Array {
  const p = Buffer.alloc(32);
  p.writeUInt32LE(512, 0); // argsz: room for the region's capabilities, so the reply carries its fd
  p.writeUInt32LE(index, 8);
  return encodeCommand(id, P.VFIO_USER_DEVICE_GET_REGION_INFO, p);
}

const setIrqs = (id: number, start: number) =>
  encodeCommand(
    id,
    P.VFIO_USER_DEVICE_SET_IRQS,
    encodeIrqSet({
      flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      index: MSIX_INDEX,
      start,
      count: 1,
    }),
  );

/** Each message in a buffer of whole vfio-user messages: its msg_id and whether it is a reply. */
function split(data: Buffer): { msgId: number; command: number }[] {
  const out = [];
  for (let at = 0; at < data.length; ) {
    const size = data.readUInt32LE(at + 4);
    const m = decodeMessage(data.subarray(at, at + size));
    assert.ok(m.flags & P.VFIO_USER_F_TYPE_REPLY, 'a reply');
    assert.equal(m.flags & P.VFIO_USER_F_ERROR, 0, `msg ${m.msgId} succeeded`);
    out.push({ msgId: m.msgId, command: m.command });
    at += size;
  }
  return out;
}

test('replies given in one turn go at its end, together, in order, after the device commands of that turn', async () => {
  const device = new MemoryDevice();
  // What the server had sent when each SET_IRQS reached the model (a relay would send its device command now).
  const sentAtModel: number[] = [];
  const answers: (() => void)[] = [];
  // The grant after an early VERSION reply (as the broker's): later requests wait for it (versionSettled).
  let settle!: () => void;
  const settled = new Promise<void>((r) => {
    settle = r;
  });
  let serverFd = -1;
  const sends: { fd: number; bytes: number; fds: number }[] = [];
  const model = modelOf(device, {
    setIrqs: (req: IrqSetRequest) => {
      sentAtModel.push(sends.filter((s) => s.fd === serverFd).length);
      req.issued?.(); // its device command is out (as a relay's): the next pipelined request may start
      // Answered later, all at once (as a device's replies that came in one read).
      return new Promise<void>((resolve) => answers.push(resolve));
    },
    versionSettled: () => settled,
  });
  const server = new VfioUserServer({ createDevice: () => model, log: () => {} });
  const [x, y] = native.unixPair(true);
  serverFd = x;
  const raw = new Fd(y);
  const realSend = native.sendmsg;
  native.sendmsg = (fd, data, fds) => {
    sends.push({ fd, bytes: data.byteLength, fds: fds.length });
    return realSend(fd, data, fds);
  };
  try {
    server.serveSocket(new StreamSocket(new Fd(x), { framing: VFIO_USER_FRAMING }));
    realSend(raw.fd, encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, {})), []);
    const deadline0 = Date.now() + 5000;
    let v: ReturnType<typeof native.recvmsg> = null;
    while (v === null && Date.now() < deadline0) {
      await new Promise((r) => setTimeout(r, 1));
      v = native.recvmsg(raw.fd, 1 << 16);
    }
    assert.deepEqual(
      split(v!.data).map((m) => m.msgId),
      [1],
      'VERSION answered',
    );
    // One write, as the client library's acquire batch: a region (its reply carries the region's fd), three
    // pipelined SET_IRQS. They wait for the grant; once it is done all run in one turn.
    realSend(
      raw.fd,
      Buffer.concat([regionInfoRequest(2, MEM_REGION), setIrqs(3, 0), setIrqs(4, 1), setIrqs(5, 2)]),
      [],
    );
    // Read by the server (else "nothing served" would hold only because nothing had arrived), then a turn for
    // whatever that read set going.
    await untilRead(x, 'the four requests');
    await new Promise((r) => setImmediate(r));
    assert.equal(answers.length, 0, 'nothing is served before the grant is done');
    const afterVersion = sends.filter((s) => s.fd === x).length;
    settle();
    const deadline = Date.now() + 5000;
    while (answers.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    assert.equal(answers.length, 3, 'the three SET_IRQS reached the model');
    // The first SET_IRQS reached the model in the turn that answered VERSION and the region: nothing had left.
    // The SET_IRQS reached the model in the turn that answered the region: its reply had not left.
    assert.deepEqual(
      sentAtModel.map((n) => n - afterVersion),
      [0, 0, 0],
      'the replies of a turn wait for its end, after the device commands of that turn',
    );
    assert.deepEqual(
      sends
        .filter((s) => s.fd === x)
        .slice(afterVersion)
        .map((s) => s.fds),
      [1],
      'the region reply, with its fd, alone',
    );
    const r2 = native.recvmsg(raw.fd, 1 << 16)!;
    assert.deepEqual(
      split(r2.data).map((m) => m.msgId),
      [2],
    );
    assert.equal(r2.fds.length, 1, 'the region fd came with its reply');
    for (const fd of r2.fds) new Fd(fd).close();
    // The device answers all three at once: their replies go in one sendmsg, in order.
    const before = sends.filter((s) => s.fd === x).length;
    for (const a of answers) a();
    await new Promise((r) => setImmediate(r));
    const replies = sends.filter((s) => s.fd === x).slice(before);
    assert.equal(replies.length, 1, 'one sendmsg for the three replies');
    assert.equal(replies[0]!.bytes, 3 * HEADER_SIZE);
    const r3 = native.recvmsg(raw.fd, 1 << 16)!;
    assert.deepEqual(
      split(r3.data).map((m) => [m.msgId, m.command]),
      [
        [3, P.VFIO_USER_DEVICE_SET_IRQS],
        [4, P.VFIO_USER_DEVICE_SET_IRQS],
        [5, P.VFIO_USER_DEVICE_SET_IRQS],
      ],
    );
  } finally {
    native.sendmsg = realSend;
    for (const a of answers) a();
    await server.close();
    raw.close();
    device.dispose();
  }
});

test('a reply held for the turn whose socket a session closes itself in that turn: dropped, its fd closed, no throw', async () => {
  const device = new MemoryDevice();
  let socket!: StreamSocket;
  let answered = false;
  // SET_IRQS is answered from a promise (held for the turn's end), and the region request behind it in the same
  // turn (held too, with its fd); then, still in that turn, the socket is closed directly, as PendingSession's
  // hang-up does, before its 'close' event can reach the connection.
  const model = modelOf(device, {
    setIrqs: async () => {
      void Promise.resolve()
        .then(() => undefined)
        .then(() => undefined)
        .then(() => undefined)
        .then(() => {
          answered = true;
          socket.close();
        });
    },
  });
  const server = new VfioUserServer({ createDevice: () => model, log: () => {} });
  const [x, y] = native.unixPair(true);
  const raw = new Fd(y);
  try {
    socket = new StreamSocket(new Fd(x), { framing: VFIO_USER_FRAMING });
    server.serveSocket(socket);
    native.sendmsg(raw.fd, encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, {})), []);
    native.sendmsg(raw.fd, Buffer.concat([setIrqs(2, 0), regionInfoRequest(3, MEM_REGION)]), []);
    const deadline = Date.now() + 5000;
    while (!answered && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    assert.ok(answered, 'SET_IRQS reached the model');
    // The flush of the held reply ran (a throw there would end the process: node:test fails the file).
    await new Promise((r) => setImmediate(r));
    // The region reply's fd (a dup of the device memory's) was closed with the dropped reply: only the device's
    // own is left.
    assert.equal(memfdFdCount('vfio-user-test-mem'), 1, "the dropped reply's fd is closed");
    // Dropped: the stream ends with no reply of that turn (the server's end is closed: EOF, not EAGAIN).
    const ids: number[] = [];
    for (let eof = false; !eof; ) {
      const r = native.recvmsg(raw.fd, 1 << 16);
      assert.ok(r, 'the server closed its end');
      for (const fd of r.fds) new Fd(fd).close();
      ids.push(...split(r.data).map((m) => m.msgId));
      eof = r.eof;
    }
    assert.ok(!ids.includes(2) && !ids.includes(3), `no reply of that turn was sent (got ${ids})`);
  } finally {
    await server.close();
    raw.close();
    device.dispose();
  }
});
