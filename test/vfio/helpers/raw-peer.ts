// Peers for the vfio-user conformance tests (user-conformance*.test.ts), over
// real socket pairs: a hand-driven RawPeer that sends and reads raw messages,
// and the three set-ups the tests start from (our client against a raw server,
// a raw client against our server, our client against our server). Shared so
// each test file states only what it checks.
import assert from 'node:assert/strict';
import type { Fd } from '../../../src/sys/fd.js';
import type { StreamMessage, StreamSocket } from '../../../src/sys/index.js';
import { VfioUserClient } from '../../../src/vfio/user/client.js';
import {
  decodeMessage,
  encodeCommand,
  encodeReply,
  type VfioUserMessage,
} from '../../../src/vfio/user/codec.js';
import { decodeVersion, encodeVersion } from '../../../src/vfio/user/messages.js';
import * as P from '../../../src/vfio/user/protocol.js';
import { VfioUserServer } from '../../../src/vfio/user/server.js';
import { vfioUserPair } from '../../../src/vfio/user/transport.js';
import type { MemoryDevice } from '../../fixtures/vfio-user/memory-device.js';

/** One end of a connected vfio-user socket pair per side. */
export function socketPair(): [StreamSocket, StreamSocket] {
  return vfioUserPair();
}

/** A hand-driven peer: send raw messages, read what comes back (each wait bounded). */
export class RawPeer {
  #inbox: StreamMessage[] = [];
  #waiters: ((m: StreamMessage | null) => void)[] = [];
  #closed = false;
  #nextId = 0x100;

  constructor(readonly socket: StreamSocket) {
    socket.on('message', (m) => {
      const w = this.#waiters.shift();
      if (w) w(m);
      else this.#inbox.push(m);
    });
    socket.once('close', () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w(null);
    });
  }

  /** The next message (its fds closed, their count kept), or null once the peer hung up. */
  async next(timeoutMs = 2000): Promise<(VfioUserMessage & { fdCount: number }) | null> {
    const m =
      this.#inbox.shift() ??
      (this.#closed
        ? null
        : await new Promise<StreamMessage | null>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no message within ${timeoutMs} ms`)), timeoutMs);
            this.#waiters.push((msg) => {
              clearTimeout(timer);
              resolve(msg);
            });
          }));
    if (!m) return null;
    for (const fd of m.fds) fd.close();
    return { ...decodeMessage(m.data), fdCount: m.fds.length };
  }

  /** Nothing arrives within `ms`. */
  async quiet(ms = 50): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.#inbox.length === 0;
  }

  /** Send a server-to-client command and return its reply. */
  async command(command: number, payload: Uint8Array, fds: (Fd | number)[] = []) {
    const id = this.#nextId++;
    this.socket.send(encodeCommand(id, command, payload), fds);
    const r = await this.next();
    assert.ok(r, 'the client replied');
    assert.equal(r.msgId, id);
    assert.equal(r.command, command);
    return r;
  }

  /** Answer the next request (it must be `command`) with an empty reply. */
  async answer(command: number): Promise<VfioUserMessage & { fdCount: number }> {
    const m = await this.next();
    assert.ok(m, 'a request came');
    assert.equal(m.command, command);
    this.socket.send(encodeReply(m.msgId, m.command));
    return m;
  }
}

/** A VfioUserClient talking to a RawPeer that answered its VERSION with `capabilities`. */
export async function clientOfRawServer(capabilities: Record<string, unknown> = {}) {
  const [a, b] = socketPair();
  const server = new RawPeer(b);
  const connecting = VfioUserClient.fromSocket(a, { timeoutMs: 2000 });
  const hello = await server.next();
  assert.ok(hello);
  server.socket.send(encodeReply(hello.msgId, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const client = await connecting;
  return {
    server,
    client,
    close() {
      client.close();
      server.socket.close();
    },
  };
}

export async function rawClientOf(device: MemoryDevice, capabilities: Record<string, unknown> = {}) {
  const logs: string[] = [];
  const server = new VfioUserServer({ createDevice: () => device, log: (m) => logs.push(m) });
  const [a, b] = socketPair();
  server.serveSocket(b);
  const peer = new RawPeer(a);
  a.send(encodeCommand(1, P.VFIO_USER_VERSION, encodeVersion(0, 0, { capabilities })));
  const v = await peer.next();
  assert.ok(v && !(v.flags & P.VFIO_USER_F_ERROR), 'version accepted');
  return {
    peer,
    logs,
    replyCapabilities: decodeVersion(v.payload).json['capabilities'] as Record<string, unknown>,
    async close() {
      a.close();
      await server.close();
      device.dispose();
    },
  };
}

export async function clientOfServer(device: MemoryDevice) {
  const server = new VfioUserServer({ createDevice: () => device, log: () => {} });
  const [a, b] = socketPair();
  server.serveSocket(b);
  const client = await VfioUserClient.fromSocket(a);
  return {
    client,
    async close() {
      client.close();
      await server.close();
      device.dispose();
    },
  };
}
