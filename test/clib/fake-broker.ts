// The fake broker of the C client's tests (bad-broker.test.ts): a real AF_UNIX stream socket in this process
// that answers clib-probe well-formed, as the TypeScript client's fake broker does (serveFakeLease), unless a
// scenario's fault answers a request itself. The helpers here build the raw messages a fault sends.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Fd, MemFd, StreamServer, type StreamSocket } from '../../src/sys/index.js';
import { VFIO_USER_FRAMING } from '../../src/vfio/user/index.js';
import { type FakeBrokerOptions, LEASE_INFO, serveFakeLease } from '../helpers/fake-lease-broker.js';
import { runProgram, sanitizerFindings } from './build.js';

export const CAPS = {
  capabilities: {
    max_msg_fds: 16,
    max_data_xfer_size: 65536,
    pgsizes: 4096,
    devlease: { error_reason: true },
  },
};
/** The lease info the fake broker describes (the TypeScript client's fake broker's). */
export const INFO = LEASE_INFO;

export function header(id: number, cmd: number, size: number, flags = 1, err = 0): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt16LE(id, 0);
  h.writeUInt16LE(cmd, 2);
  h.writeUInt32LE(size, 4);
  h.writeUInt32LE(flags, 8);
  h.writeUInt32LE(err, 12);
  return h;
}
export const reply = (id: number, cmd: number, payload: Buffer = Buffer.alloc(0)) =>
  Buffer.concat([header(id, cmd, 16 + payload.length), payload]);

export function versionReply(json: unknown): Buffer {
  const text = typeof json === 'string' ? json : JSON.stringify(json);
  return Buffer.concat([Buffer.alloc(4), Buffer.from(`${text}\0`)]);
}

/** Send one message; true: the step was the fault's to answer. */
export function sent(s: StreamSocket, data: Buffer): boolean {
  s.send(data);
  return true;
}

/**
 * `whole` in two pieces: the bytes before `at` (with `firstFds`) now, the rest (with a new memfd when `restFd`)
 * 100 ms later — a message whose pieces arrive in separate reads.
 */
export function sentSplit(
  s: StreamSocket,
  whole: Buffer,
  at: number,
  firstFds: readonly (Fd | number)[],
  restFd: boolean,
): boolean {
  s.send(whole.subarray(0, at), firstFds);
  setTimeout(() => {
    using rest = restFd ? MemFd.create('split-rest', { size: 4096 }) : null;
    try {
      s.send(whole.subarray(at), rest ? [rest.fd] : []);
    } catch {
      // the client may have hung up already
    }
  }, 100);
  return true;
}

/** A well-behaved answer to each request; a scenario replaces one step with its fault (`msg`: header included). */
/** A fault: true when it answered the request itself; `answer()` sends the well-formed answer (later, say). */
export type Step = (sock: StreamSocket, id: number, cmd: number, msg: Buffer, answer: () => void) => boolean;

/** The kick fd at SQ_TAIL (default: ENOTSUP), and what to call for each reply the client sends. */
export type FakeOptions = Pick<FakeBrokerOptions, 'kickFd' | 'onReply'>;

/** A DMA_READ command of 64 bytes at an address the client never mapped (it answers EFAULT). */
export function dmaRead(id: number): Buffer {
  const access = Buffer.alloc(16);
  access.writeBigUInt64LE(0x100000000n, 0);
  access.writeBigUInt64LE(64n, 8);
  return Buffer.concat([header(id, 11, 32, 0), access]);
}

/**
 * Keeps `sock`'s peer busy for good: DMA_READs in batches of 1024 (one write each), another batch whenever fewer
 * than 2048 are unanswered, so commands always wait in the client's socket however fast it serves them. Returns
 * what to call for each reply.
 */
export function streamCommands(sock: StreamSocket): () => void {
  let next = 1000;
  let unanswered = 0;
  const batch = () => {
    try {
      sock.send(Buffer.concat(Array.from({ length: 1024 }, () => dmaRead(next++ & 0xffff))));
      unanswered += 1024;
    } catch {
      // the client hung up
    }
  };
  batch();
  batch();
  return () => {
    if (--unanswered < 2048) batch();
  };
}

export function fakeBroker(path: string, fault: Step, opts: FakeOptions = {}): StreamServer {
  const server = StreamServer.listen(path, { socket: { framing: VFIO_USER_FRAMING } });
  server.on('connection', (sock: StreamSocket) => serveFake(sock, fault, opts));
  return server;
}

/** The fake broker's side of one connection. */
export function serveFake(sock: StreamSocket, fault: Step, opts: FakeOptions = {}): void {
  const { kickFd, onReply } = opts;
  serveFakeLease(sock, {
    kickFd,
    onReply,
    fault: (s, msg, { data }, answer) => fault(s, msg.msgId, msg.command, data, answer),
  });
}

/**
 * Runs `clib-probe <scenario>` against a fake broker with `fault`; its output. The probe must exit 0 with its fds
 * back to baseline and no sanitizer finding. `timeoutMs` bounds the probe (a client stuck for good fails the test).
 */
export async function probe(
  scenario: string,
  fault: Step,
  opts: FakeOptions & { timeoutMs?: number; listen?: (path: string) => { close(): void } } = {},
): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-fake-broker-'));
  const server = opts.listen?.(join(dir, 'fake.sock')) ?? fakeBroker(join(dir, 'fake.sock'), fault, opts);
  try {
    const r = await runProgram('clib-probe', [scenario, join(dir, 'fake.sock')], opts.timeoutMs);
    assert.equal(sanitizerFindings(r.stderr), null, r.stderr);
    assert.equal(
      r.code,
      0,
      `clib-probe ${scenario} exited ${r.code} (${r.signal}${r.signal === 'SIGKILL' ? ': still running at its deadline' : ''})\n${r.stdout}\n${r.stderr}`,
    );
    assert.match(r.stdout, /ok fds back to baseline/);
    return r.stdout;
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
