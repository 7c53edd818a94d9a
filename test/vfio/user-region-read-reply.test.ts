// A register read is one REGION_READ message whose reply is checked in place:
// the data comes back; a reply whose access head (offset, region, count) or
// size does not match the request is a protocol error that closes the client.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { StreamMessage } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { encodeVersion } from '../../src/vfio/user/messages.js';
import {
  HEADER_SIZE,
  VFIO_USER_F_TYPE_REPLY,
  VFIO_USER_MAJOR,
  VFIO_USER_MINOR,
  VFIO_USER_REGION_READ,
  VFIO_USER_VERSION,
} from '../../src/vfio/user/protocol.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { trackFdLeaks } from '../helpers/fds.js';

after(trackFdLeaks());

/** How the server below spoils a REGION_READ reply (its access head starts as the request's). */
type Spoil = (payload: Buffer) => Buffer;

/** A client on a raw server that answers VERSION, and REGION_READ with bytes 0xa0.. spoiled by `spoil`. */
async function clientOn(spoil: Spoil): Promise<VfioUserClient> {
  const [a, b] = vfioUserPair();
  b.on('message', (m: StreamMessage) => {
    for (const fd of m.fds) fd.close();
    const cmd = m.data.readUInt16LE(2);
    let payload: Uint8Array = new Uint8Array(0);
    if (cmd === VFIO_USER_VERSION)
      payload = encodeVersion(VFIO_USER_MAJOR, VFIO_USER_MINOR, { capabilities: {} });
    if (cmd === VFIO_USER_REGION_READ) {
      const count = m.data.readUInt32LE(HEADER_SIZE + 12);
      const p = Buffer.alloc(16 + count);
      m.data.copy(p, 0, HEADER_SIZE, HEADER_SIZE + 16);
      for (let i = 0; i < count; i++) p[16 + i] = 0xa0 + i;
      payload = spoil(p);
    }
    const out = Buffer.alloc(HEADER_SIZE + payload.byteLength);
    m.data.copy(out, 0, 0, 4); // msg_id, cmd
    out.writeUInt32LE(out.length, 4);
    out.writeUInt32LE(VFIO_USER_F_TYPE_REPLY, 8);
    out.set(payload, HEADER_SIZE);
    b.send(out);
  });
  b.on('close', () => b.close());
  return VfioUserClient.fromSocket(a);
}

test('a register read returns the reply data', async () => {
  const c = await clientOn((p) => p);
  const data = await c.regionRead(2, 0x40n, 4);
  assert.deepEqual([...data], [0xa0, 0xa1, 0xa2, 0xa3]);
  c.close();
});

const spoiled: [string, Spoil][] = [
  [
    'another offset',
    (p) => {
      p.writeBigUInt64LE(0x44n, 0);
      return p;
    },
  ],
  [
    'another region',
    (p) => {
      p.writeUInt32LE(3, 8);
      return p;
    },
  ],
  [
    'another count',
    (p) => {
      p.writeUInt32LE(2, 12);
      return p;
    },
  ],
  ['fewer data bytes than the count', (p) => p.subarray(0, 18)],
  ['more data bytes than the count', (p) => Buffer.concat([p, Buffer.alloc(1)])],
  ['no access head', (p) => p.subarray(0, 12)],
];

for (const [what, spoil] of spoiled) {
  test(`a REGION_READ reply with ${what}: EPROTO, and the client closes`, async () => {
    const c = await clientOn(spoil);
    await assert.rejects(c.regionRead(2, 0x40n, 4), { code: 'EPROTO' });
    assert.equal(c.closed, true);
  });
}
