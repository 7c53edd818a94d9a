// The admin socket: JSON requests and replies, one per SOCK_SEQPACKET
// message, for root, the broker's own user, or the configured admin group.
//
//   → {"op":"status"} | {"op":"leases"} | {"op":"clients"} | {"op":"revoke","id":"queue-3","deadlineMs":500}
//     | {"op":"drain","on":true} | {"op":"reset"} | {"op":"audit"} | {"op":"reload"}
//     | {"op":"recovery"} (status' `recovery` alone, no device read: its boundMs estimates how long a reset may take)
//     | {"op":"top"} (devlease top's view) | {"op":"upgrade","binary":PATH,"config":FILE} (handover/)
//   ← {"ok":true,"result":...} | {"ok":false,"error":"...","code":"..."}

import { chownSync, readFileSync } from 'node:fs';
import {
  type Fd,
  type PeerCred,
  type SeqpacketMessage,
  SeqpacketServer,
  SeqpacketSocket,
} from '../sys/index.js';
import { RateLimitedLog } from '../util/rate-limited-log.js';
import type { Broker } from './broker.js';
import { checkRevokeDeadline } from './lease.js';
import { TopSnapshot } from './observe/top-snapshot.js';

/**
 * Flow control, as on the vfio-user connections (src/vfio/user/connection.ts),
 * so that an admin client costs the broker a bounded amount whatever it does:
 * reading stops while ADMIN_MAX_PENDING requests are being handled or more
 * than ADMIN_REPLY_HIGH_WATER reply bytes wait for the client to read them,
 * and resumes when both are back under. Requests already read still get their
 * replies, so the backlog passes the high-water mark by at most
 * ADMIN_MAX_PENDING replies; past ADMIN_REPLY_HARD_LIMIT (replies that big
 * are not expected) the connection is cut.
 */
export const ADMIN_MAX_PENDING = 16;
export const ADMIN_REPLY_HIGH_WATER = 256 * 1024;
export const ADMIN_REPLY_HARD_LIMIT = 4 * 1024 * 1024;

const json = (v: unknown) =>
  Buffer.from(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x)));

/** The peer's supplementary groups (SO_PEERCRED carries only the primary gid). */
function supplementaryGroups(pid: number): number[] {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^Groups:\s*(.*)$/m)?.[1] ?? '';
    return line.split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export class AdminServer {
  readonly #server: SeqpacketServer;
  readonly #broker: Broker;
  readonly path: string;
  /** `devlease top`'s view, made on first use. */
  #top: TopSnapshot | null = null;
  /** Accept failures, at most a few lines per errno per interval whatever their rate. */
  readonly #errors: RateLimitedLog;

  /** `listening`: a socket systemd made (socket activation): its mode and group are the socket unit's. */
  constructor(broker: Broker, path: string, listening?: Fd) {
    this.#broker = broker;
    this.path = path;
    this.#errors = new RateLimitedLog((line) => broker.log(line));
    const { mode, group } = broker.config.admin;
    if (listening) {
      this.#server = SeqpacketServer.fromListening(listening, path);
    } else {
      this.#server = SeqpacketServer.listen(path, { mode });
      if (group !== null) chownSync(path, -1, group);
    }
    this.#server.on('connection', (sock: SeqpacketSocket) => this.#accept(sock));
    // An accept that fails (EMFILE, ENOMEM) pauses accepting for a while (unix-server.ts) and is reported
    // here; without a listener the 'error' event was an uncaught exception that took the broker down.
    this.#server.on('error', (err: Error & { code?: string }) =>
      this.#errors.log(err.code ?? 'error', `admin socket: accept failed: ${err.message}`),
    );
  }

  #allowed(cred: PeerCred): boolean {
    const group = this.#broker.config.admin.group;
    if (cred.uid === 0 || cred.uid === process.getuid?.()) return true;
    return group !== null && (cred.gid === group || supplementaryGroups(cred.pid).includes(group));
  }

  /** Open connections and their requests in progress (an upgrade waits for those and hands the sockets over). */
  readonly #conns = new Map<SeqpacketSocket, { pending: number }>();
  #held = false;

  /** Stop accepting and reading requests (an upgrade's quiesce); requests in progress carry on. */
  hold(): void {
    this.#held = true;
    this.#server.pause();
    for (const s of this.#conns.keys()) s.pause();
  }

  unhold(): void {
    this.#held = false;
    this.#server.resume();
    for (const s of this.#conns.keys()) if (!s.closed) s.resume();
  }

  /** Requests being handled now, over all connections. */
  get inFlight(): number {
    let n = 0;
    for (const c of this.#conns.values()) n += c.pending;
    return n;
  }

  /** The connection whose `upgrade` request is in progress (handed over: the new broker may answer it). */
  #asker: SeqpacketSocket | null = null;

  /** The listening socket, every open connection's descriptor (owned here), which one asked for the upgrade. */
  handover(): { listening: Fd; connections: Fd[]; asker: number | null } {
    const open = [...this.#conns.keys()].filter((s) => !s.closed);
    const asker = this.#asker ? open.indexOf(this.#asker) : -1;
    return {
      listening: this.#server.fd,
      connections: open.map((s) => s.fd),
      asker: asker < 0 ? null : asker,
    };
  }

  /**
   * Serve a connection another broker accepted (an upgrade): requests it sent meanwhile are read now.
   * `asker`: its `upgrade` request is still unanswered (answerUpgrade() answers it).
   */
  adoptConnection(fd: Fd, asker = false): void {
    const sock = new SeqpacketSocket(fd);
    this.#accept(sock);
    if (asker && !sock.closed) this.#asker = sock;
  }

  /**
   * The taking-over broker answers the handed-over `upgrade` request when the old broker went away before it
   * could (result), or forgets it (null: the old broker answers). Sent before anything else is read from that
   * connection, so replies stay in request order.
   */
  answerUpgrade(result: unknown): void {
    const sock = this.#asker;
    this.#asker = null;
    if (!sock || sock.closed || result === null) return;
    try {
      sock.send(json({ ok: true, result }));
    } catch {
      sock.close(); // the asker is gone
    }
  }

  #accept(sock: SeqpacketSocket): void {
    let cred: PeerCred;
    try {
      cred = sock.peerCred();
    } catch (err) {
      // Who the peer is cannot be told (SO_PEERCRED failed): refuse by closing. Thrown from here it was an
      // uncaught exception in the listener's poll callback (the fail-nth walk of revoke).
      this.#errors.log('peercred', `admin socket: a connection closed: ${(err as Error).message}`);
      sock.close();
      return;
    }
    const pid = cred.pid;
    if (!this.#allowed(cred)) {
      try {
        sock.send(
          json({ ok: false, code: 'EACCES', error: 'the admin socket is for root or the admin group' }),
        );
      } catch {
        // gone already (EPIPE): the refusal has no one to go to
      } finally {
        sock.close();
      }
      return;
    }
    const conn = { pending: 0 };
    this.#conns.set(sock, conn);
    sock.on('close', () => this.#conns.delete(sock));
    const flowControl = () => {
      if (sock.closed) return;
      if (this.#held) {
        sock.pause();
        return;
      }
      if (sock.queuedBytes > ADMIN_REPLY_HARD_LIMIT) {
        this.#broker.log(`admin connection (pid ${pid}): ${sock.queuedBytes} reply bytes unread; closing it`);
        sock.close();
        return;
      }
      if (conn.pending >= ADMIN_MAX_PENDING || sock.queuedBytes > ADMIN_REPLY_HIGH_WATER) sock.pause();
      else sock.resume();
    };
    sock.on('drain', flowControl);
    sock.on('error', () => sock.close());
    sock.on('message', (msg: SeqpacketMessage) => {
      for (const fd of msg.fds) fd.close();
      conn.pending++;
      flowControl();
      void this.#handle(msg.data, sock)
        .then((result) => ({ ok: true, result }))
        .catch((err: Error & { code?: string }) => ({
          ok: false,
          error: err.message,
          code: err.code ?? 'EINVAL',
        }))
        .then((reply) => {
          conn.pending--;
          if (sock.closed) return;
          try {
            sock.send(json(reply));
          } catch {
            sock.close(); // the peer is gone (EPIPE)
            return;
          }
          flowControl();
        });
    });
  }

  async #handle(data: Buffer, sock: SeqpacketSocket): Promise<unknown> {
    let req: { op?: unknown; id?: unknown; deadlineMs?: unknown; on?: unknown };
    try {
      req = JSON.parse(data.toString('utf8'));
    } catch {
      throw Object.assign(new Error('request is not JSON'), { code: 'EINVAL' });
    }
    const b = this.#broker;
    switch (req.op) {
      case 'status':
        return b.status();
      case 'leases':
        return b.leases.all().map((l) => l.summary());
      case 'clients': {
        const byPid = new Map<number, Record<string, unknown>>();
        for (const l of b.leases.all()) {
          const c = byPid.get(l.ctx.pid) ?? {
            pid: l.ctx.pid,
            uid: l.ctx.uid,
            gid: l.ctx.gid,
            exe: l.ctx.exe,
            leases: [],
            mappings: 0,
            mappedBytes: 0n,
          };
          (c.leases as string[]).push(l.id);
          c.mappings = (c.mappings as number) + l.mappings.size;
          c.mappedBytes = (c.mappedBytes as bigint) + l.mappedBytes;
          byPid.set(l.ctx.pid, c);
        }
        return [...byPid.values()];
      }
      case 'revoke': {
        if (typeof req.id !== 'string')
          throw Object.assign(new Error('revoke needs "id"'), { code: 'EINVAL' });
        // Checked here, before any lease is touched: a deadline past setTimeout's range once reclaimed at once.
        if (req.deadlineMs !== undefined) checkRevokeDeadline(req.deadlineMs);
        const lease = b.leases.revoke(req.id, req.deadlineMs);
        return lease.summary();
      }
      case 'drain':
        b.leases.draining = req.on !== false;
        return { draining: b.leases.draining };
      case 'recovery':
        return b.recoveryStatus();
      case 'reset':
        await b.resetDevice();
        return { reset: true };
      case 'reload':
        return b.reload();
      case 'audit':
        return b.audit.recent.slice(-100);
      case 'upgrade': {
        const r = req as { binary?: unknown; config?: unknown; deadlineMs?: unknown };
        for (const k of ['binary', 'config'] as const)
          if (r[k] !== undefined && typeof r[k] !== 'string')
            throw Object.assign(new Error(`upgrade: "${k}" must be a path`), { code: 'EINVAL' });
        if (r.deadlineMs !== undefined && (!Number.isInteger(r.deadlineMs) || (r.deadlineMs as number) < 1))
          throw Object.assign(new Error('upgrade: "deadlineMs" must be a positive integer'), {
            code: 'EINVAL',
          });
        this.#asker = sock;
        try {
          return await b.upgrade({
            ...(r.binary ? { binary: r.binary as string } : {}),
            ...(r.config ? { config: r.config as string } : {}),
            ...(r.deadlineMs ? { deadlineMs: r.deadlineMs as number } : {}),
            viaAdmin: true,
          });
        } finally {
          if (this.#asker === sock) this.#asker = null;
        }
      }
      case 'top':
        this.#top ??= new TopSnapshot(b);
        return this.#top.snapshot();
      default:
        throw Object.assign(new Error(`unknown op ${JSON.stringify(req.op)}`), { code: 'EINVAL' });
    }
  }

  close(): void {
    this.#server.close();
  }
}
