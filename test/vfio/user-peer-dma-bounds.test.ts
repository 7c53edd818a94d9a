// What a client costs a server whose model sends it DMA_READ/DMA_WRITE (src/vfio/user/peer-dma.ts): the size of
// one command, the msg_ids kept for late replies, the requests read while a reply is awaited. A hand-driven
// peer over a real AF_UNIX socket pair, since devlease's own client answers every command it is sent.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { encodeCommand } from '../../src/vfio/user/codec.js';
import { MAX_PENDING_AWAITING } from '../../src/vfio/user/connection-replies.js';
import { encodeRegionAccess, encodeVersion, vfio_user_device_info } from '../../src/vfio/user/messages.js';
import { MAX_PEER_COMMANDS, MAX_TIMED_OUT_IDS, type PeerDma } from '../../src/vfio/user/peer-dma.js';
import * as P from '../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';
import { IOVA, LONG, PeerModel } from './helpers/peer-dma-model.js';
import { RawPeer, socketPair } from './helpers/raw-peer.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** A server with one PeerModel and a raw client past VERSION, advertising `capabilities`. */
async function rawClient(
  capabilities: Record<string, unknown> = {},
  opts: { maxDataXferSize?: number } = {},
) {
  const model = new PeerModel();
  const logs: string[] = [];
  const server = new VfioUserServer({ createDevice: () => model, log: (m) => logs.push(m), ...opts });
  const [a, b] = socketPair();
  const conn = server.serveSocket(b);
  const peer = new RawPeer(a);
  a.send(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const v = await peer.next();
  assert.ok(v && !(v.flags & P.VFIO_USER_F_ERROR), 'version accepted');
  return {
    model,
    dma: model.dma as PeerDma,
    conn,
    peer,
    logs,
    async close() {
      a.close();
      await server.close();
    },
  };
}

describe('peer DMA bounds', () => {
  test("maxTransfer: the client's max_data_xfer_size, or the server's own when smaller (its receive buffer)", async () => {
    const small = await rawClient({ max_data_xfer_size: 4096 });
    const large = await rawClient({ max_data_xfer_size: 1 << 20 }, { maxDataXferSize: 8192 });
    const unsaid = await rawClient();
    try {
      assert.equal(small.dma.maxTransfer, 4096);
      assert.equal(large.dma.maxTransfer, 8192);
      assert.equal(unsaid.dma.maxTransfer, P.DEFAULT_MAX_DATA_XFER_SIZE, "the spec's 1 MiB default, capped");
      await assert.rejects(small.dma.read(IOVA, 4097, LONG), { code: 'E2BIG' });
    } finally {
      await small.close();
      await large.close();
      await unsaid.close();
    }
  });

  test(`a client leaving more than ${MAX_TIMED_OUT_IDS} timed-out commands unanswered is cut off`, async () => {
    const t = await rawClient();
    try {
      let timedOut = 0;
      let epipe = 0;
      // Bounded (the cut comes in round 65): without it, this would time out ids until none were left.
      for (let round = 0; !t.conn.closing && round < 200; round++) {
        const round = await Promise.allSettled(
          Array.from({ length: MAX_PEER_COMMANDS }, () => t.dma.read(IOVA, 4, 1)),
        );
        for (const r of round) {
          const code = r.status === 'rejected' ? (r.reason as { code?: string }).code : 'answered';
          if (code === 'ETIMEDOUT') timedOut++;
          else if (code === 'EPIPE') epipe++;
          else assert.fail(`a read ended ${code}`);
        }
      }
      assert.equal(timedOut, MAX_TIMED_OUT_IDS + 1, 'cut at the first one past the bound');
      assert.ok(epipe < MAX_PEER_COMMANDS, 'the rest of that round failed EPIPE');
      assert.match(await within(t.conn.closed, 'the close'), /left 1025 timed-out DMA commands unanswered/);
    } finally {
      await t.close();
    }
  });

  test(`more than ${MAX_PENDING_AWAITING} requests queued while a reply is awaited: the client is cut off`, async () => {
    const t = await rawClient();
    try {
      const doorbell = new Uint8Array(12);
      new DataView(doorbell.buffer).setBigUint64(0, IOVA, true);
      new DataView(doorbell.buffer).setUint32(8, 4, true);
      const info = vfio_user_device_info.encode({ argsz: 16, flags: 0, num_regions: 0, num_irqs: 0 });
      // The REGION_WRITE's model waits for a DMA_READ this peer never answers; reading goes on behind it.
      const requests = [encodeCommand(2, P.VFIO_USER_REGION_WRITE, encodeRegionAccess(0n, 0, doorbell))];
      for (let i = 0; i <= MAX_PENDING_AWAITING; i++)
        requests.push(encodeCommand(3 + i, P.VFIO_USER_DEVICE_GET_INFO, info));
      t.peer.socket.send(Buffer.concat(requests));
      assert.match(
        await within(t.conn.closed, 'the close'),
        /too many requests while the server awaited its reply/,
      );
    } finally {
      await t.close();
    }
  });
});
