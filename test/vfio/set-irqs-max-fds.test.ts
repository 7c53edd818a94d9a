// SET_IRQS with more eventfds than the server takes in one message (its VERSION's max_msg_fds; libvfio-user
// says 8): the client sends them in several messages, each for its run of vectors, as QEMU does
// (hw/vfio-user/device.c splits by max_send_fds). Before, it sent every eventfd in one message, and a server
// that enforces its limit cut the connection.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventFd } from '../../src/sys/index.js';
import { VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD } from '../../src/vfio/uapi/vfio.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import * as P from '../../src/vfio/user/protocol.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { clientOfRawServer } from './helpers/raw-peer.js';

test('SET_IRQS with 5 eventfds to a server taking 2 a message: three messages, vectors 0-1, 2-3 and 4', async () => {
  const leaks = trackFdLeaks();
  const { server, client, close } = await clientOfRawServer({ max_msg_fds: 2 });
  const efds = Array.from({ length: 5 }, () => new EventFd());
  try {
    const done = client.setIrqs({
      flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
      index: 4,
      start: 0,
      count: 5,
      fds: efds.map((e) => e.fd),
    });
    const seen: [number, number, number][] = [];
    for (let i = 0; i < 3; i++) {
      const m = await server.next();
      assert.ok(m);
      assert.equal(m.command, P.VFIO_USER_DEVICE_SET_IRQS);
      const p = Buffer.from(m.payload);
      assert.equal(p.readUInt32LE(8), 4, 'the index');
      seen.push([p.readUInt32LE(12), p.readUInt32LE(16), m.fdCount]);
      server.socket.send(encodeReply(m.msgId, m.command));
    }
    await done;
    assert.deepEqual(seen, [
      [0, 2, 2],
      [2, 2, 2],
      [4, 1, 1],
    ]);
    assert.ok(await server.quiet(), 'nothing more was sent');
  } finally {
    for (const e of efds) e.close();
    close();
  }
  await leaks();
});
