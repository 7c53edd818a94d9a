// Bad input from the broker: a fake broker (a real AF_UNIX stream socket in this process) answers the C
// client's connect with one fault each — truncated replies, oversized or unexpected messages, fds where
// none belong, malformed JSON. Each is an error naming the problem, never a crash, and the C process
// ends with the fds it started with (clib-probe connect counts them; the sanitizer build checks memory).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MemFd, StreamServer, type StreamSocket } from '../../src/sys/index.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/index.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { buildClib, runProgram, sanitizerFindings } from './build.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
before(() => buildClib());

const CAPS = {
  capabilities: {
    max_msg_fds: 16,
    max_data_xfer_size: 65536,
    pgsizes: 4096,
    devlease: { error_reason: true },
  },
};
const INFO = {
  kind: 'queue',
  lease: 'queue-9',
  state: 'active',
  deadline: null,
  queue: 0,
  iovaWindow: { base: '0x100000000', size: '0x40000000' },
  devmem: null,
  vectors: 1,
  regions: [{ index: 2, size: '0x1000', unit: '0x1000' }],
  isolation: { queuePage: { level: 'enforced', reason: 'test' } },
  faults: [],
};

function header(id: number, cmd: number, size: number, flags = 1, err = 0): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt16LE(id, 0);
  h.writeUInt16LE(cmd, 2);
  h.writeUInt32LE(size, 4);
  h.writeUInt32LE(flags, 8);
  h.writeUInt32LE(err, 12);
  return h;
}
const reply = (id: number, cmd: number, payload: Buffer = Buffer.alloc(0)) =>
  Buffer.concat([header(id, cmd, 16 + payload.length), payload]);

function versionReply(json: unknown): Buffer {
  const text = typeof json === 'string' ? json : JSON.stringify(json);
  return Buffer.concat([Buffer.alloc(4), Buffer.from(`${text}\0`)]);
}
function regionInfo(index: number, size: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(32, 0);
  b.writeUInt32LE(index === 9 ? 1 : 7, 4); // READ (info) / READ|WRITE|MMAP
  b.writeUInt32LE(index, 8);
  b.writeBigUInt64LE(BigInt(size), 16);
  return b;
}
function regionRead(req: Buffer, info: Buffer): Buffer {
  const offset = Number(req.readBigUInt64LE(16));
  const count = req.readUInt32LE(28);
  const data = Buffer.alloc(count);
  info.copy(data, 0, offset, offset + count);
  return Buffer.concat([req.subarray(16, 32), data]);
}

/** Send one message; true: the step was the fault's to answer. */
function sent(s: StreamSocket, data: Buffer): boolean {
  s.send(data);
  return true;
}

/** A well-behaved answer to each request; a scenario replaces one step with its fault. */
type Step = (sock: StreamSocket, id: number, cmd: number, msg: Buffer) => boolean;
function fakeBroker(path: string, fault: Step): StreamServer {
  const server = StreamServer.listen(path, { socket: { framing: VFIO_USER_FRAMING } });
  const info = Buffer.alloc(16384);
  info.write(JSON.stringify(INFO));
  server.on('connection', (sock: StreamSocket) => {
    sock.on('message', (m: { data: Buffer; fds: { close(): void }[] }) => {
      for (const fd of m.fds) fd.close();
      const id = m.data.readUInt16LE(0);
      const cmd = m.data.readUInt16LE(2);
      if ((m.data.readUInt32LE(8) & 0xf) === 1) return; // the client's answer to a command of ours
      try {
        answer(sock, id, cmd, m.data);
      } catch {
        // the client hung up first (it refused what we sent): nothing to answer
      }
    });
    sock.on('error', () => undefined);
  });
  function answer(sock: StreamSocket, id: number, cmd: number, msg: Buffer): void {
    if (fault(sock, id, cmd, msg)) return;
    if (cmd === 1) sock.send(reply(id, cmd, versionReply(CAPS)));
    else if (cmd === 5) {
      const index = msg.readUInt32LE(16 + 8);
      if (index === 9) sock.send(reply(id, cmd, regionInfo(9, 16384)));
      else {
        using mem = MemFd.create('fake-slice', { size: 4096 });
        sock.send(reply(id, cmd, regionInfo(index, 4096)), [mem.fd]);
      }
    } else if (cmd === 9) sock.send(reply(id, cmd, regionRead(msg, info)));
    else sock.send(reply(id, cmd));
  }
  return server;
}

async function connectTo(fault: Step): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-fake-broker-'));
  const server = fakeBroker(join(dir, 'fake.sock'), fault);
  try {
    const r = await runProgram('clib-probe', ['connect', join(dir, 'fake.sock')]);
    assert.equal(sanitizerFindings(r.stderr), null, r.stderr);
    assert.equal(r.code, 0, `clib-probe connect exited ${r.code} (${r.signal})\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /ok fds back to baseline/);
    return r.stdout;
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

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
    (s, id, cmd) => {
      if (cmd !== 1) return false;
      const whole = reply(id, cmd, versionReply(CAPS));
      s.send(whole.subarray(0, 16));
      setTimeout(() => {
        using a = MemFd.create('x', { size: 4096 });
        try {
          s.send(whole.subarray(16), [a.fd]);
        } catch {
          // the client may have hung up already
        }
      }, 100);
      return true;
    },
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
