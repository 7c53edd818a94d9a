// A reply the server cannot finish — one that cannot be built, or a model whose `sent` callback throws — ends
// its connection (connection.ts #finish), as a request's failure before VERSION does: the requests read behind
// it are not stranded in the connection's line, the model's disconnected() runs once, the connection's
// `closed` resolves, nothing is left as an unhandled rejection and no fd leaks. Before this, such a throw left a
// rejection in the line: every later request waited forever, and the close never reached the model.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Fd, native } from '../../src/sys/index.js';
import { VfioUserClient } from '../../src/vfio/user/client.js';
import { VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';
import { VfioUserServer } from '../../src/vfio/user/server.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { MemoryDevice, modelOf, REG_REGION } from '../fixtures/vfio-user/memory-device.js';
import { trackFdLeaks } from '../helpers/fds.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** `d` as a model whose region io fds reply hands out one eventfd and whose `sent` throws (a model bug). */
const throwingSent = (d: MemoryDevice) =>
  modelOf(d, {
    regionIoFds: () => ({
      subRegions: [
        { offset: 0n, size: 4n, fdIndex: 0, type: VFIO_USER_IO_FD_TYPE_IOEVENTFD, flags: 0, datamatch: 0n },
      ],
      fds: [new Fd(native.eventfd(0, 0))],
      sent: () => {
        throw new Error('model bug: sent() threw');
      },
    }),
  });

/** `p`'s outcome, or 'stuck' if it has none within `ms`. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'stuck'> {
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<'stuck'>((r) => {
    timer = setTimeout(r, ms, 'stuck');
  });
  try {
    return await Promise.race([p, stuck]);
  } finally {
    clearTimeout(timer);
  }
}

test("a model whose reply's sent() throws ends the connection: the requests behind it are not stranded, disconnected() runs once", async () => {
  const device = new MemoryDevice();
  const logs: string[] = [];
  const server = new VfioUserServer({
    createDevice: () => throwingSent(device),
    log: (m) => logs.push(m),
  });
  const [a, b] = vfioUserPair();
  const connection = server.serveSocket(b);
  const client = await VfioUserClient.fromSocket(a, { timeoutMs: 5000 });
  try {
    // The io fds request and a register read behind it, in one batch: the read waits for the first's reply.
    const ioFds = client.regionIoFds(REG_REGION).then(
      (r) => {
        for (const fd of r.fds) fd.close();
        return 'answered';
      },
      (err: Error) => `refused: ${err.message}`,
    );
    const read = client.regionRead(REG_REGION, 0, 4).then(
      () => 'answered',
      (err: Error) => `refused: ${err.message}`,
    );
    const closed = await within(connection.closed, 3000);
    assert.notEqual(closed, 'stuck', 'the connection ends (before: its close waited behind a rejection)');
    assert.match(
      String(closed),
      /internal error: the reply to VFIO_USER_DEVICE_GET_REGION_IO_FDS .*sent\(\) threw/,
    );
    assert.equal(device.disconnectCalls, 1, "the model's disconnected() ran once");
    assert.equal(server.connections.size, 0, 'the server dropped the connection');
    // The client is told: the read behind it is not left waiting for its deadline.
    const readOutcome = await within(read, 3000);
    assert.match(String(readOutcome), /^refused: /, 'the read behind it fails at once with the hang-up');
    assert.notEqual(await within(ioFds, 3000), 'stuck', 'the io fds request has its outcome');
    assert.ok(
      logs.some((l) => l.includes('GET_REGION_IO_FDS') && l.includes('closing it')),
      `the server says why it closed the connection (logs: ${logs.join(' | ')})`,
    );
  } finally {
    client.close();
    await server.close();
    device.dispose();
  }
});
