// Bad input from the broker: a fake broker (a real AF_UNIX stream socket in this process) answers the C
// client's connect with one fault each — truncated replies, oversized or unexpected messages, fds where
// none belong, malformed JSON. Each is an error naming the problem, never a crash, and the C process
// ends with the fds it started with (clib-probe connect counts them; the sanitizer build checks memory).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Fd, MemFd, native, StreamSocket } from '../../src/sys/index.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/index.js';
import { saturatedBlockingEventfd, trackFdLeaks } from '../helpers/fds.js';
import { buildClib } from './build.js';
import {
  CAPS,
  header,
  INFO,
  probe,
  reply,
  type Step,
  sent,
  sentSplit,
  serveFake,
  streamCommands,
  versionReply,
} from './fake-broker.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
before(() => buildClib());

const connectTo = (fault: Step): Promise<string> => probe('connect', fault);

test('the fake broker itself is well-formed: the C client connects', async () => {
  assert.match(await connectTo(() => false), /connected queue-9/);
});

const cases: [string, Step, RegExp][] = [
  [
    'a VERSION reply cut short, then a hang-up',
    (s, id, cmd) => {
      if (cmd !== 1) return false;
      s.send(Buffer.concat([header(id, cmd, 200), Buffer.alloc(20)]));
      setTimeout(() => s.close(), 50);
      return true;
    },
    /error EPROTO: .*truncated/,
  ],
  [
    // Before the fix the fds that came with the first 8 bytes stayed open in the client (fds not back to baseline).
    'a header cut short after its first 8 bytes brought fds, then a hang-up',
    (s, id, cmd) => {
      if (cmd !== 1) return false;
      using a = MemFd.create('cut-header', { size: 4096 });
      s.send(header(id, cmd, 200).subarray(0, 8), [a.fd, a.fd]);
      setTimeout(() => s.close(), 50);
      return true;
    },
    /error EPROTO: .*truncated message and hung up/,
  ],
  [
    'a header whose first bytes brought fds, and its rest more',
    (s, id, cmd) => {
      if (cmd !== 1) return false;
      using a = MemFd.create('cut-header', { size: 4096 });
      return sentSplit(s, reply(id, cmd, versionReply(CAPS)), 8, [a.fd], true);
    },
    /error EPROTO: .*fds after a message's first bytes/,
  ],
  [
    'a message announcing 4 GiB',
    (s, id, cmd) => cmd === 1 && sent(s, header(id, cmd, 0xffffffff)),
    /error EPROTO: .*msg_size 4294967295/,
  ],
  [
    'a message shorter than its header',
    (s, id, cmd) => cmd === 1 && sent(s, header(id, cmd, 8)),
    /error EPROTO: .*msg_size 8/,
  ],
  [
    'VERSION reply JSON that is not JSON',
    (s, id, cmd) => cmd === 1 && sent(s, reply(id, cmd, versionReply('{"capabilities": [nope'))),
    /error EPROTO: bad VERSION reply/,
  ],
  [
    'a reply to an id never sent',
    (s, id, cmd) => cmd === 1 && sent(s, reply(id + 7, cmd, versionReply(CAPS))),
    /error EPROTO: .*reply to message id/,
  ],
  [
    'a reply naming another command',
    (s, id, cmd) => cmd === 1 && sent(s, reply(id, 5, versionReply(CAPS))),
    /error EPROTO: .*names command 5/,
  ],
  [
    'unexpected fds on the REGION_INFO reply of the info region (3 fds, short payload)',
    (s, id, cmd, m) => {
      if (cmd !== 5 || m.readUInt32LE(24) !== 9) return false;
      using a = MemFd.create('x', { size: 4096 });
      s.send(reply(id, cmd, Buffer.alloc(8)), [a.fd, a.fd, a.fd]);
      return true;
    },
    /error EPROTO: .*reply is 8 bytes, needs 32/,
  ],
  [
    'fds arriving after the first bytes of a message',
    (s, id, cmd) => cmd === 1 && sentSplit(s, reply(id, cmd, versionReply(CAPS)), 16, [], true),
    /error EPROTO: .*fds after a message's first bytes/,
  ],
  [
    'a REGION_READ reply shorter than asked',
    (s, id, cmd, m) => cmd === 9 && sent(s, reply(id, cmd, m.subarray(16, 32))),
    /error EPROTO: region 9 read: the reply has 16 bytes/,
  ],
  [
    'an info region without a lease description',
    (s, id, cmd, m) => {
      if (cmd !== 9) return false;
      const data = Buffer.alloc(m.readUInt32LE(28));
      data.write('{"hello":"world"}');
      s.send(reply(id, cmd, Buffer.concat([m.subarray(16, 32), data])));
      return true;
    },
    /error EPROTO: info region does not hold a devlease lease description/,
  ],
  [
    'an info region with a window that is not a number',
    (s, id, cmd, m) => {
      if (cmd !== 9) return false;
      const data = Buffer.alloc(m.readUInt32LE(28));
      data.write(JSON.stringify({ ...INFO, iovaWindow: { base: 'lots', size: '0x1000' } }));
      s.send(reply(id, cmd, Buffer.concat([m.subarray(16, 32), data])));
      return true;
    },
    /error EPROTO: info region: iovaWindow.base is not a number/,
  ],
  [
    'a DMA_READ command from the broker mid-setup, with an fd (refused, then setup goes on)',
    (s, id, cmd) => {
      if (cmd !== 8) return false;
      using a = MemFd.create('x', { size: 4096 });
      const access = Buffer.alloc(16);
      access.writeBigUInt64LE(0x100000000n, 0);
      access.writeBigUInt64LE(64n, 8);
      s.send(Buffer.concat([header(900, 11, 32, 0), access]), [a.fd]);
      s.send(reply(id, cmd));
      return true;
    },
    /connected queue-9/,
  ],
  [
    'an error reply with a reason',
    (s, id, cmd) => {
      if (cmd !== 1) return false;
      const why = Buffer.from('policy: uid 0 may not lease queue');
      s.send(Buffer.concat([header(id, cmd, 16 + why.length, 0x21, 13), why]));
      return true;
    },
    /error EACCES: lease refused: Permission denied: policy: uid 0 may not lease queue/,
  ],
  [
    'no reply at all',
    (_s, _id, cmd) => cmd === 1,
    /error ETIMEDOUT: lease refused: no reply from the broker in 3000 ms/,
  ],
];

for (const [name, fault, expect] of cases) {
  test(`${name}: an error, not a crash`, async () => {
    assert.match(await connectTo(fault), expect);
  });
}

test('a doorbell kick fd that would block the submit (a blocking eventfd, or no eventfd) is refused: EPROTO', async () => {
  const { EFD_NONBLOCK } = native.constants as Record<string, number>;
  const ok = await probe('queue', () => false, { kickFd: () => new Fd(native.eventfd(0, EFD_NONBLOCK!)) });
  assert.match(ok, /queue created/, 'a non-blocking eventfd is taken');
  // Before the fix the queue was made with it, and its first kicked submit blocked in write(2) for good.
  assert.match(
    await probe('queue', () => false, { kickFd: saturatedBlockingEventfd }),
    /error EPROTO: the queue's doorbell kick fd is refused: it is a blocking eventfd \(no O_NONBLOCK\)/,
  );
  assert.match(
    await probe('queue', () => false, { kickFd: () => MemFd.create('not-a-kick', { size: 4096 }).fd }),
    /error EPROTO: the queue's doorbell kick fd is refused: it is not an eventfd/,
  );
});

// The lease's setup (its SET_IRQS and REGION_INFOs) goes out as one batch: a broker that answers none of it until
// it holds both kinds still gets a connected client. A client that waited for each reply before the next request
// (every setup request its own round trip, as before issue 16's forty-first pass) sent one and waited for good.
test('the setup goes out as one batch: a broker answering only once it holds SET_IRQS and REGION_INFO requests gets a lease', async () => {
  const held: { cmd: number; answer: () => void }[] = [];
  const out = await probe(
    'connect',
    (_s, _id, cmd, m, answer) => {
      // SET_IRQS, and GET_REGION_INFO of the queue page's slice (region 2; the info region's is read before)
      if (cmd !== 8 && !(cmd === 5 && m.readUInt32LE(16 + 8) === 2)) return false;
      held.push({ cmd, answer });
      if (held.some((h) => h.cmd === 8) && held.some((h) => h.cmd === 5)) {
        for (const h of held.splice(0)) h.answer();
      }
      return true;
    },
    { timeoutMs: 20_000 },
  );
  assert.match(out, /connected queue-9/);
});

test("a setup request never answered (REQ's SET_IRQS): devlease_connect times out naming it, not the requests answered after it", async () => {
  const out = await probe('connect', (_s, _id, cmd, m) => cmd === 8 && m.readUInt32LE(16 + 8) === 4);
  assert.match(out, /error ETIMEDOUT: set irqs \(REQ\): no reply from the broker in 3000 ms/);
});

test('a broker streaming commands instead of answering: devlease_connect ends at its timeout (ETIMEDOUT)', async () => {
  let more: (() => void) | undefined;
  const out = await probe(
    'connect',
    (s, _id, cmd) => {
      if (cmd !== 1) return false;
      more = streamCommands(s); // and never the VERSION reply
      return true;
    },
    // Before the fix each command was read at once, so the call never waited long enough to time out: the
    // probe ran until this bound killed it.
    { onReply: () => more?.(), timeoutMs: 30_000 },
  );
  assert.match(
    out,
    /error ETIMEDOUT: lease refused: no reply from the broker in 3000 ms \(it sent \d+ commands meanwhile\)/,
  );
});

test('a broker streaming commands after setup: devlease_next_notice serves some and returns', async () => {
  let more: (() => void) | undefined;
  const out = await probe(
    'notice-once',
    (s, id, cmd, m) => {
      if (cmd !== 8 || m.readUInt32LE(16 + 8) !== 4) return false; // SET_IRQS of REQ, the last interrupt of the setup
      s.send(reply(id, cmd));
      more = streamCommands(s);
      return true;
    },
    // Before the fix devlease_next_notice ("Never blocks") served them for as long as they came.
    { onReply: () => more?.(), timeoutMs: 30_000 },
  );
  assert.match(out, /next notice returned 0 \(none\)/);
});

/** A listener with a backlog of 1 that accepts nothing, filled by connections of our own until one gets EAGAIN. */
function fullBacklog(path: string) {
  const listener = new Fd(native.unixListen(path, 0o600, 1, true));
  const fillers: Fd[] = [];
  for (;;) {
    try {
      fillers.push(new Fd(native.unixConnect(path, true)));
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') break;
      throw err;
    }
    assert.ok(fillers.length < 64, 'the backlog never filled');
  }
  return { listener, fillers };
}

test('a broker whose listen backlog stays full: devlease_connect fails ETIMEDOUT at its timeout, saying so', async () => {
  const out = await probe('connect', () => false, {
    listen: (path) => {
      const { listener, fillers } = fullBacklog(path);
      return {
        close() {
          for (const f of [listener, ...fillers]) f.close();
        },
      };
    },
  });
  // Before the fix: the POLLOUT of a socket that never connected came at once, then "ENOTCONN … sending".
  assert.match(
    out,
    /error ETIMEDOUT: connect .*fake\.sock: the broker's listen backlog stayed full for 3000 ms/,
  );
});

test('a broker whose listen backlog is full for a while: devlease_connect tries again and connects', async () => {
  const sockets: { close(): void }[] = [];
  const out = await probe('connect', () => false, {
    listen: (path) => {
      const { listener, fillers } = fullBacklog(path);
      sockets.push(listener, ...fillers);
      // Room comes later: the fillers are accepted and dropped, then each new connection is served.
      let dropped = 0;
      const accept = () => {
        for (let fd = native.unixAccept(listener.fd); fd >= 0; fd = native.unixAccept(listener.fd)) {
          if (dropped++ < fillers.length) {
            native.close(fd);
            continue;
          }
          const sock = new StreamSocket(new Fd(fd), { framing: VFIO_USER_FRAMING });
          sockets.push(sock);
          serveFake(sock, () => false);
        }
      };
      let timer = setTimeout(() => {
        timer = setInterval(accept, 5);
      }, 300);
      return {
        close() {
          clearTimeout(timer);
          clearInterval(timer);
          for (const s of sockets) s.close();
        },
      };
    },
  });
  assert.match(out, /connected queue-9/);
});

test("a VERSION pgsizes above INT64_MAX (libvfio-user's 0xfffffffffffff000) gives a 4096-byte DMA page", async () => {
  // Written as JSON text: a JS number cannot hold 2^64 - 4096 exactly as JSON.stringify would print it.
  const json = JSON.stringify(CAPS).replace('"pgsizes":4096', '"pgsizes":18446744073709547520');
  assert.notEqual(json, JSON.stringify(CAPS));
  const out = await probe(
    'connect',
    (s, id, cmd) => cmd === 1 && sent(s, reply(id, cmd, versionReply(json))),
  );
  // Before the fix json_object_get_int64 clamped it to INT64_MAX, whose lowest set bit made the page 1 byte.
  assert.match(out, /connected queue-9 dma page 4096/);
});
