// Fuzz sessions: one connection each to a target, sending hostile frames in
// one of several manners — a hostile talker (valid VERSION first or not,
// fds of every kind attached at random), a never-reading peer (pipelines
// requests and reads nothing), a slow peer (frames trickled a few bytes at a
// time), and the admin socket's JSON. Every wait has a deadline; a session
// returns how many frames it sent and whether the server cut it off.
import { openSync } from 'node:fs';
import { EventFd, Fd, MemFd, native, type SeqpacketMessage, SeqpacketSocket } from '../../src/sys/index.js';
import type { StreamSocket } from '../../src/sys/stream-socket.js';
import { encodeCommand } from '../../src/vfio/user/codec.js';
import { encodeVersion } from '../../src/vfio/user/messages.js';
import * as P from '../../src/vfio/user/protocol.js';
import { connectVfioUser } from '../../src/vfio/user/transport.js';
import type { Rng } from '../helpers/rng.js';
import { frame } from './frames.js';

export interface SessionResult {
  frames: number;
  replies: number;
  cut: boolean;
  /** VERSION was sent and, within its deadline, neither answered nor the connection closed. */
  unanswered?: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fds of every kind a hostile peer may attach: memfds (short, empty), an eventfd, /dev/null, a socket. */
function fdPool(r: Rng): Fd[] {
  const fds: Fd[] = [];
  fds.push(MemFd.create('fuzz', { size: r.pick([0, 4096, 65536]) }).fd);
  fds.push(new EventFd().fd);
  fds.push(new Fd(openSync('/dev/null', 'r')));
  const [a, b] = native.unixPair(true);
  fds.push(new Fd(a));
  native.close(b);
  return fds;
}

function someFds(r: Rng, pool: Fd[]): Fd[] {
  if (!r.chance(0.15)) return [];
  return Array.from({ length: r.int(1, 4) }, () => r.pick(pool));
}

/** Waits until `pred` or `ms` pass. */
async function until(pred: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!pred() && Date.now() < end) await sleep(5);
}

/** Waits until replies stop coming (none for `quietMs`), the socket closes, or `ms` pass. */
async function quiet(res: SessionResult, closed: () => boolean, quietMs: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  let last = -1;
  let since = Date.now();
  while (!closed() && Date.now() < end) {
    if (res.replies !== last) {
      last = res.replies;
      since = Date.now();
    } else if (Date.now() - since > quietMs) return;
    await sleep(10);
  }
}

/** Backpressure for the fuzzer itself: wait while much is unsent, the socket being open. */
async function drained(sock: StreamSocket | SeqpacketSocket, closed: () => boolean): Promise<void> {
  await until(() => closed() || sock.queuedBytes < 256 * 1024, 30_000);
}

export async function vfioUserSession(
  r: Rng,
  path: string,
  opts: { allowReset: boolean; version: Record<string, unknown>; maxFrames: number },
): Promise<SessionResult> {
  const res: SessionResult = { frames: 0, replies: 0, cut: false };
  const sock = connectVfioUser(path);
  let closed = false;
  sock.on('close', () => {
    closed = true;
  });
  sock.on('error', () => {});
  sock.on('message', (m: { fds: Fd[] }) => {
    res.replies++;
    for (const fd of m.fds) fd.close();
  });
  const pool = fdPool(r);
  let msgId = 0;
  const send = (bytes: Buffer, fds: Fd[] = []) => {
    if (closed) return false;
    try {
      sock.send(bytes, fds);
    } catch {
      return false;
    }
    res.frames++;
    return true;
  };
  try {
    const manner = r.pick(['hostile', 'hostile', 'hostile', 'never-reading', 'slow', 'pre-version'] as const);
    if (manner !== 'pre-version') {
      send(encodeCommand(msgId++, P.VFIO_USER_VERSION, encodeVersion(0, 0, opts.version)));
      await until(() => closed || res.replies > 0, 15_000);
      if (!closed && res.replies === 0) res.unanswered = true;
    }
    if (manner === 'never-reading') {
      sock.pause();
      // 4 KiB reads of config space, pipelined: the server must stop reading us, or cut us off.
      const req = Buffer.alloc(16);
      req.writeUInt32LE(7, 8);
      req.writeUInt32LE(256, 12);
      const n = Math.min(opts.maxFrames, r.int(100, 3000));
      for (let i = 0; i < n && !closed && sock.queuedBytes < 1024 * 1024; i++) {
        send(encodeCommand(msgId++ & 0xffff, P.VFIO_USER_REGION_READ, req));
      }
      await sleep(r.int(10, 500));
    } else if (manner === 'slow') {
      const n = Math.min(opts.maxFrames, r.int(1, 5));
      for (let i = 0; i < n && !closed; i++) {
        const f = frame(r, { msgId: msgId++ & 0xffff, allowReset: opts.allowReset });
        for (let o = 0; o < f.bytes.length && !closed; o += r.int(1, 16)) {
          try {
            sock.send(f.bytes.subarray(o, Math.min(f.bytes.length, o + 16)));
          } catch {
            break;
          }
          await sleep(r.int(0, 20));
        }
        res.frames++;
        if (f.lies) break;
      }
    } else {
      const n = Math.min(opts.maxFrames, r.int(1, 3000));
      const window = r.pick([1, 4, 16, 64]);
      let expected = res.replies;
      for (let i = 0; i < n && !closed; i++) {
        const f = frame(r, { msgId: msgId++ & 0xffff, allowReset: opts.allowReset });
        if (send(f.bytes, someFds(r, pool)) && f.wantsReply) expected++;
        if (f.lies) break;
        // A window of unanswered requests, so frames go to a server still reading them, not to one that cut us off.
        if (expected - res.replies >= window)
          await until(() => closed || expected - res.replies < window, 5000);
      }
      await until(() => closed || sock.queuedBytes === 0, 10_000);
      await quiet(res, () => closed, 300, 20_000);
    }
    res.cut = closed;
  } finally {
    sock.close();
    for (const fd of pool) fd.close();
  }
  return res;
}

const ADMIN_OPS = ['status', 'leases', 'clients', 'audit', 'revoke', 'drain-off', 'nope', 42, null];

/** Admin JSON: valid ops with hostile fields, not-JSON, huge, empty-with-fds. No reset, no drain on (they stop everyone). */
function adminMessage(r: Rng, protectedIds: readonly string[]): Buffer {
  const k = r.int(0, 9);
  if (k === 0) return r.bytes(r.int(1, 256));
  if (k === 1) return Buffer.from(`{"op":"status"${'x'.repeat(r.int(0, 64))}`);
  if (k === 2) return Buffer.from(JSON.stringify({ op: 'status', pad: 'p'.repeat(r.int(0, 200_000)) }));
  if (k === 3) return Buffer.from('['.repeat(r.int(1, 5000)));
  let op = r.pick(ADMIN_OPS);
  const req: Record<string, unknown> = {};
  if (op === 'drain-off') {
    op = 'drain';
    req.on = false;
  }
  req.op = op;
  if (op === 'revoke') {
    let id: unknown = r.pick([`queue-${r.int(0, 70)}`, '', 'x'.repeat(r.int(0, 5000)), 7, null, {}, []]);
    if (protectedIds.includes(id as string)) id = 'queue-999';
    req.id = id;
    if (r.chance(0.7)) req.deadlineMs = r.pick([0, -1, 1.5, 2 ** 31, 2 ** 53, 1e308, 'soon', null, {}]);
  }
  if (r.chance(0.2)) req.__proto__x = { toString: 1 };
  return Buffer.from(JSON.stringify(req));
}

export async function adminSession(
  r: Rng,
  path: string,
  opts: { maxFrames: number; protectedIds: readonly string[] },
): Promise<SessionResult> {
  const res: SessionResult = { frames: 0, replies: 0, cut: false };
  const sock = SeqpacketSocket.connect(path);
  let closed = false;
  sock.on('close', () => {
    closed = true;
  });
  sock.on('error', () => {});
  const neverReads = r.chance(0.15);
  if (!neverReads)
    sock.on('message', (m: SeqpacketMessage) => {
      res.replies++;
      for (const fd of m.fds) fd.close();
    });
  const pool = fdPool(r);
  try {
    const n = Math.min(opts.maxFrames, r.int(1, 500));
    for (let i = 0; i < n && !closed; i++) {
      const data = neverReads ? Buffer.from('{"op":"audit"}') : adminMessage(r, opts.protectedIds);
      try {
        sock.send(data, neverReads ? [] : someFds(r, pool));
      } catch {
        break;
      }
      res.frames++;
      if (!neverReads && i % 32 === 31) await drained(sock, () => closed);
      if (neverReads && sock.queuedBytes > 1024 * 1024) break;
    }
    if (neverReads) await sleep(r.int(10, 300));
    else await until(() => closed || res.replies >= res.frames, 10_000);
    res.cut = closed;
  } finally {
    sock.close();
    for (const fd of pool) fd.close();
  }
  return res;
}
