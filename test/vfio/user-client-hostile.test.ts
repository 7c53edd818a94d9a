// The vfio-user client against a server that follows the framing but not good sense: what it may make the client
// hold (requests in flight, replies queued, fds) stays bounded, and a malformed reply leaks nothing.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { StreamMessage } from '../../src/sys/index.js';
import { MAX_IN_FLIGHT } from '../../src/vfio/user/client-region-access.js';
import { decodeMessage, encodeReply } from '../../src/vfio/user/codec.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';
import { clientOfRawServer } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

test('a server with max_data_xfer_size 1: a 70,000-byte read is at most 64 messages in flight, and completes', async () => {
  const { server, client, close } = await clientOfRawServer({ max_data_xfer_size: 1 });
  try {
    // Answer every REGION_READ with the low byte of its offset.
    server.socket.removeAllListeners('message');
    server.socket.on('message', (m: StreamMessage) => {
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
    assert.equal(bytes.length, count);
    for (let i = 0; i < count; i += 997) assert.equal(bytes[i], i & 0xff, `byte ${i}`);
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});
