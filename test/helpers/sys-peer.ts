// Parent side of test/fixtures/sys/peer.ts: spawns the peer as a real child
// process, connected over a SeqpacketSocket, and sends it commands.
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type Fd,
  type SeqpacketMessage,
  SeqpacketServer,
  type SeqpacketSocket,
} from '../../src/sys/index.js';

const PEER_SCRIPT = fileURLToPath(new URL('../fixtures/sys/peer.js', import.meta.url));

export type Reply = { ok: boolean; error?: string; code?: string } & Record<string, unknown>;

export class Peer extends EventEmitter {
  readonly child: ChildProcess;
  readonly socket: SeqpacketSocket;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #nextId = 1;
  #pending = new Map<number, (r: Reply) => void>();

  static async spawn(): Promise<Peer> {
    const dir = mkdtempSync(join(tmpdir(), 'devlease-peer-'));
    const path = join(dir, 'peer.sock');
    const server = SeqpacketServer.listen(path);
    try {
      // Through sh only to disable core dumps: some tests kill the peer with SIGBUS.
      const child = spawn(
        '/bin/sh',
        ['-c', 'ulimit -c 0; exec "$0" "$@"', process.execPath, PEER_SCRIPT, path],
        {
          stdio: ['ignore', 'inherit', 'inherit'],
        },
      );
      const exited = once(child, 'exit').then(([code, signal]) => ({ code, signal }));
      const socket = await Promise.race([
        once(server, 'connection').then(([s]) => s as SeqpacketSocket),
        exited.then(({ code, signal }) => {
          throw new Error(`peer fixture exited before connecting (code ${code}, signal ${signal})`);
        }),
      ]);
      return new Peer(child, socket, exited);
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  private constructor(
    child: ChildProcess,
    socket: SeqpacketSocket,
    exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>,
  ) {
    super();
    this.child = child;
    this.socket = socket;
    this.exited = exited;
    socket.on('message', (msg: SeqpacketMessage) => {
      for (const fd of msg.fds) fd.close();
      const body = JSON.parse(msg.data.toString()) as Reply & { id?: number; event?: string };
      if (body.id === undefined) {
        this.emit('event', body);
        return;
      }
      this.#pending.get(body.id)?.(body);
      this.#pending.delete(body.id);
    });
    socket.on('close', () => {
      for (const resolve of this.#pending.values()) resolve({ ok: false, error: 'peer hung up' });
      this.#pending.clear();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Sends a command (fds are dup'd by the kernel; the caller keeps its own). */
  request(
    op: string,
    args: Record<string, unknown> = {},
    fds: readonly (Fd | number)[] = [],
  ): Promise<Reply> {
    const id = this.#nextId++;
    const reply = new Promise<Reply>((resolve) => this.#pending.set(id, resolve));
    this.socket.send(Buffer.from(JSON.stringify({ id, op, ...args })), fds);
    return reply;
  }

  /** Like request() but fails the test on an error reply. */
  async call(
    op: string,
    args: Record<string, unknown> = {},
    fds: readonly (Fd | number)[] = [],
  ): Promise<Reply> {
    const r = await this.request(op, args, fds);
    if (!r.ok) throw new Error(`peer ${op} failed: ${r.error}`);
    return r;
  }

  /** Asks the peer to exit and waits for it; closes our socket. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null && !this.socket.closed) {
      await this.request('exit');
    }
    await this.exited;
    this.socket.close();
  }
}
