// libdevlease whose process's fd table is full when a message carrying fds comes (clients/c/tests/clib-fdfull.c):
// the kernel then installs none or only some of the fds and sets MSG_CTRUNC, as it does for more fds than the
// receive buffer holds. The broker did nothing wrong and the message's bytes came whole: that one call fails
// EMFILE naming the limit, the fds that came are closed, a command whose fds were lost is refused EINVAL, and
// the session goes on. A message really carrying more fds than the client takes is still a protocol error.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Fd, MemFd, native, type StreamSocket } from '../../src/sys/index.js';
import { encodeReply } from '../../src/vfio/user/codec.js';
import { encodeRegionIoFdsReply, VFIO_USER_IO_FD_TYPE_IOEVENTFD } from '../../src/vfio/user/region-io-fds.js';
import { until } from '../helpers/broker-rig.js';
import { fakeLeaseBroker } from '../helpers/fake-lease-broker.js';
import { trackFdLeaks } from '../helpers/fds.js';
import { buildClib, runProgram, sanitizerFindings } from './build.js';
import { dmaRead, probe, reply } from './fake-broker.js';

const leakCheck = trackFdLeaks();
after(leakCheck);
before(() => buildClib());

const GET_REGION_IO_FDS = 6;
const DMA_READ = 11;

/**
 * GET_REGION_IO_FDS of the queue page answered with two eventfds (the kick at SQ_TAIL and one more), after a
 * DMA_READ command carrying an fd: with one slot free the kernel installs the first fd and fails the second.
 */
function twoFdIoFds(s: StreamSocket, id: number, cmd: number, m: Buffer): boolean {
  if (cmd !== GET_REGION_IO_FDS) return false;
  const { EFD_NONBLOCK } = native.constants as Record<string, number>;
  using a = new Fd(native.eventfd(0, EFD_NONBLOCK!));
  using b = new Fd(native.eventfd(0, EFD_NONBLOCK!));
  using c = new Fd(native.eventfd(0, EFD_NONBLOCK!));
  s.send(dmaRead(900), [c.fd]);
  const sub = { size: 4n, flags: 0, datamatch: 0n, type: VFIO_USER_IO_FD_TYPE_IOEVENTFD };
  const answer = {
    subRegions: [
      { ...sub, offset: 0x0cn, fdIndex: 0 },
      { ...sub, offset: 0x10n, fdIndex: 1 },
    ],
    fds: [a, b],
  };
  const r = encodeRegionIoFdsReply(m.readUInt32LE(16 + 8), m.readUInt32LE(16), answer, 16);
  s.send(encodeReply(id, cmd, r.payload), r.fds);
  return true;
}

test('a reply whose fds the full fd table cannot take fails that call EMFILE; the session goes on, nothing leaks', async () => {
  const commandErrnos: number[] = [];
  const watched = new WeakSet<StreamSocket>();
  const broker = fakeLeaseBroker({
    fault: (s, msg, received) => {
      if (!watched.has(s)) {
        watched.add(s);
        // The client's replies to our DMA_READs: their errno (header bytes 12..16).
        s.on('message', (r: { data: Buffer }) => {
          if (r.data.readUInt16LE(2) === DMA_READ) commandErrnos.push(r.data.readUInt32LE(12));
        });
      }
      return twoFdIoFds(s, msg.msgId, msg.command, received.data);
    },
  });
  try {
    const r = await runProgram('clib-fdfull', [broker.socket], 60_000);
    assert.equal(sanitizerFindings(r.stderr), null, r.stderr);
    const failures = r.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
    assert.deepEqual(failures, [], `steps failed\n${r.stdout}\n${r.stderr}`);
    assert.equal(r.code, 0, `clib-fdfull exited ${r.code} (${r.signal})\n${r.stdout}\n${r.stderr}`);
    // Before the fix: "error EPROTO … the broker sent more fds than a message may carry", every later call EPROTO.
    assert.match(
      r.stdout,
      /ok io eventfd with the fd table full: rc -24 \(EMFILE\): region io fds: .*fd table is full \(RLIMIT_NOFILE \d+\); the session goes on/,
    );
    assert.match(r.stdout, /ok the session still answers/);
    assert.match(r.stdout, /ok the fd that came is closed: 1 slot\(s\) free after/);
    assert.match(r.stdout, /ok io eventfd with the fds freed: fd \d+ \(eventfd\)/);
    assert.match(r.stdout, /ok fds back to baseline/);
    // Each DMA_READ answered in its turn, refused as one carrying fds (its fds lost or not): EINVAL. (The last
    // answer was sent before the client's exit; this process may read it after the exit event.)
    await until('the answers to 3 DMA_READs', () => commandErrnos.length >= 3, 10_000);
    assert.deepEqual(commandErrnos, [22, 22, 22]);
    assert.equal(broker.commands.filter((c) => c === GET_REGION_IO_FDS).length, 3);
  } finally {
    broker.close();
  }
});

test('a reply carrying more fds than the client takes (17) is still a protocol error: EPROTO', async () => {
  const out = await probe('connect', (s, id, cmd, m) => {
    if (cmd !== 5 || m.readUInt32LE(16 + 8) !== 2) return false; // REGION_INFO of the queue page's slice
    using mem = MemFd.create('slice', { size: 4096 });
    const info = Buffer.alloc(32);
    info.writeUInt32LE(32, 0);
    info.writeUInt32LE(7, 4);
    info.writeUInt32LE(2, 8);
    info.writeBigUInt64LE(4096n, 16);
    s.send(
      reply(id, cmd, info),
      Array.from({ length: 17 }, () => mem.fd),
    );
    return true;
  });
  assert.match(out, /error EPROTO: region info: the broker sent more fds than a message may carry/);
});
