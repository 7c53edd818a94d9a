// Requests issued in one batch (RequestChannel.batch, under VfioUserClient.batch
// and VfioUserDevice.batch): they reach the server in one sendmsg, in the order
// issued, and each keeps its own reply and its own deadline.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Fd, native, StreamSocket } from '../../src/sys/index.js';
import { RequestChannel } from '../../src/vfio/user/channel.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import { VFIO_USER_DEVICE_GET_INFO, VFIO_USER_DEVICE_RESET } from '../../src/vfio/user/protocol.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/transport.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { recordSendmsg } from '../helpers/sendmsg.js';
import { within } from '../helpers/within.js';

after(trackFdLeaks());

test('a batch of requests goes in one sendmsg, in order; each keeps its reply and its own deadline', async () => {
  using sends = recordSendmsg();
  const [x, y] = native.unixPair(true);
  const raw = new Fd(y);
  const channel = new RequestChannel(new StreamSocket(new Fd(x), { framing: VFIO_USER_FRAMING }), 60_000);
  const [first, late, last] = channel.batch(() => {
    const calls = [
      channel.request(VFIO_USER_DEVICE_GET_INFO),
      channel.request(VFIO_USER_DEVICE_RESET, undefined, [], { timeoutMs: 20 }),
      channel.request(VFIO_USER_DEVICE_GET_INFO, Uint8Array.of(1, 2, 3, 4)),
    ];
    assert.equal(native.recvmsg(raw.fd, 4096), null, 'nothing is sent until the batch returns');
    return calls;
  });
  const got = native.recvmsg(raw.fd, 4096)!;
  // Three headers (16 bytes each, the last with 4 bytes of payload), in the order issued, in one sendmsg (a read
  // joins what several sends wrote: the calls are what is counted).
  assert.equal(got.data.length, 16 + 16 + 20);
  assert.deepEqual(
    sends.on(x).map((c) => c.bytes),
    [16 + 16 + 20],
    'one sendmsg for the batch',
  );
  const ids = [0, 16, 32].map((at) => got.data.readUInt16LE(at));
  assert.deepEqual(
    [0, 16, 32].map((at) => got.data.readUInt16LE(at + 2)),
    [VFIO_USER_DEVICE_GET_INFO, VFIO_USER_DEVICE_RESET, VFIO_USER_DEVICE_GET_INFO],
  );
  // The middle one is never answered: it fails alone at its deadline; the others get their own replies.
  await assert.rejects(within(late!, 'the unanswered call failing'), { code: 'ETIMEDOUT' });
  sends.real(raw.fd, encodeReply(ids[2]!, VFIO_USER_DEVICE_GET_INFO, Uint8Array.of(9)), []);
  sends.real(raw.fd, encodeReply(ids[0]!, VFIO_USER_DEVICE_GET_INFO, Uint8Array.of(7)), []);
  assert.deepEqual([...(await within(first!, 'the first reply')).payload], [7]);
  assert.deepEqual([...(await within(last!, 'the last reply')).payload], [9]);
  channel.close();
  raw.close();
});
