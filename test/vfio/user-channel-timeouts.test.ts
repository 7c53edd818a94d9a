// Call deadlines under one timer per channel: a call with an earlier deadline
// than those pending still fails at its own, the timer re-arms for the next
// deadline after it fires, and a late reply to a timed-out call is dropped.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { StreamMessage } from '../../src/sys/index.js';
import { MAX_ABANDONED_IDS, RequestChannel } from '../../src/vfio/user/channel.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import { VFIO_USER_DEVICE_GET_INFO } from '../../src/vfio/user/protocol.js';
import { vfioUserPair } from '../../src/vfio/user/transport.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { within } from '../helpers/within.js';

const leakCheck = trackFdLeaks();
after(leakCheck);

/** A channel whose server reads every request and answers none (until told to). */
function silentServer() {
  const [a, b] = vfioUserPair();
  const seen: number[] = [];
  b.on('message', (m: StreamMessage) => {
    for (const fd of m.fds) fd.close();
    seen.push(m.data.readUInt16LE(0));
  });
  const channel = new RequestChannel(a, 60_000);
  const reply = (msgId: number) => b.send(encodeReply(msgId, VFIO_USER_DEVICE_GET_INFO, new Uint8Array(0)));
  return {
    channel,
    seen,
    reply,
    close: () => {
      channel.close();
      b.close();
    },
  };
}

const settled = (p: Promise<unknown>) => {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  return () => done;
};

test('a call with an earlier deadline than the pending ones fails at its own; the others stay pending', async () => {
  const s = silentServer();
  const long = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 60_000 });
  const longDone = settled(long);
  await assert.rejects(
    within(
      s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 20 }),
      'the 20 ms call failing',
    ),
    { code: 'ETIMEDOUT', message: /no reply within 20 ms/ },
  );
  assert.equal(longDone(), false);
  assert.equal(s.channel.pendingCount, 1);
  s.close();
  await assert.rejects(long, { code: 'ERR_DEVLEASE_CLOSED' });
});

test('after the timer fires it re-arms for the next deadline: each call fails at its own, in order', async () => {
  const s = silentServer();
  const order: number[] = [];
  const calls = [10, 40, 80].map((ms) =>
    s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: ms }).catch((err) => {
      order.push(ms);
      assert.equal(err.code, 'ETIMEDOUT');
    }),
  );
  await within(Promise.all(calls), 'all three calls failing');
  assert.deepEqual(order, [10, 40, 80]);
  assert.equal(s.channel.pendingCount, 0);
  s.close();
});

test('a call answered in time resolves; one issued after it still fails at its deadline; late replies are dropped', async () => {
  const s = silentServer();
  const first = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 30 });
  while (s.seen.length < 1) await new Promise((r) => setImmediate(r));
  s.reply(s.seen[0]!);
  assert.equal((await within(first, 'the answered call')).payload.byteLength, 0);
  const second = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 30 });
  await assert.rejects(within(second, 'the unanswered call failing'), { code: 'ETIMEDOUT' });
  s.reply(s.seen[1] ?? 1); // late: dropped, the channel stays open
  const third = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 1000 });
  while (s.seen.length < 3) await new Promise((r) => setImmediate(r));
  s.reply(s.seen[2]!);
  await within(third, 'the third call');
  assert.equal(s.channel.closed, false);
  s.close();
});

test('with no call pending the channel holds no timer that keeps the process alive', async () => {
  const s = silentServer();
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  try {
    const call = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 60_000 });
    await within(
      (async () => {
        while (s.seen.length < 1) await new Promise((r) => setImmediate(r));
      })(),
      'the request reaches the server',
    );
    assert.equal(timers(), before + 1, 'a pending call keeps the process alive until its deadline');
    s.reply(s.seen[0]!);
    await within(call, 'the reply');
    assert.equal(
      timers(),
      before,
      "answered: the deadline timer no longer holds the process (it did a call's)",
    );
    // A second call after the first was answered: its deadline still holds (the kept timer is ref'd again).
    const second = s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 60_000 });
    await within(
      (async () => {
        while (s.seen.length < 2) await new Promise((r) => setImmediate(r));
      })(),
      'the second request reaches the server',
    );
    assert.equal(timers(), before + 1, 'the second pending call keeps the process alive');
    s.reply(s.seen[1]!);
    await within(second, 'the second reply');
    assert.equal(timers(), before);
  } finally {
    s.close();
  }
});

test('a server that never answers timed-out calls: past MAX_ABANDONED_IDS of them the connection closes, saying why', async () => {
  const s = silentServer();
  let reason: Error | null = null;
  s.channel.on('close', (err: Error | null) => (reason = err));
  try {
    const calls = Array.from({ length: MAX_ABANDONED_IDS + 1 }, () =>
      s.channel.request(VFIO_USER_DEVICE_GET_INFO, undefined, [], { timeoutMs: 1 }).catch((e: Error) => e),
    );
    const errors = await within(Promise.all(calls), 'every call failing', 30_000);
    assert.ok(errors.every((e) => (e as { code?: string }).code === 'ETIMEDOUT'));
    // Without the bound each id stayed taken for good: 65,536 such calls later every request failed EAGAIN.
    assert.equal(s.channel.closed, true, 'the connection is closed');
    assert.match(String(reason), /left 4097 timed-out calls unanswered/);
    assert.equal((reason as { code?: string } | null)?.code, 'ETIMEDOUT');
    await assert.rejects(s.channel.request(VFIO_USER_DEVICE_GET_INFO), { code: 'ECONNRESET' });
  } finally {
    s.close();
  }
});
