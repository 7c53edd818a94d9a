// The admin socket: JSON requests and replies, one per SOCK_SEQPACKET
// message, for root, the broker's own user, or the configured admin group.
//
//   → {"op":"status"} | {"op":"leases"} | {"op":"clients"} | {"op":"revoke","id":"queue-3","deadlineMs":500}
//     | {"op":"drain","on":true} | {"op":"reset"} | {"op":"audit"} | {"op":"reload"}
//     | {"op":"recovery"} (status' `recovery` alone, no device read: its boundMs estimates how long a reset may take)
//     | {"op":"top"} (devlease top's view) | {"op":"upgrade","binary":PATH,"config":FILE,"deadlineMs":N} (handover/;
//       binary and config from root or the broker's user only: admin-requests.ts)
//   ← {"ok":true,"result":...} | {"ok":false,"error":"...","code":"..."}

import { DevleaseError, isSysError } from '../errors.js';
import {
  type Fd,
  type PeerCred,
  type SeqpacketMessage,
  SeqpacketServer,
  SeqpacketSocket,
} from '../sys/index.js';
import { native } from '../sys/native.js';
import { RateLimitedLog } from '../sys/rate-limited-log.js';
import { AdminConnectionLimits, type AdminLimits } from './admin-limits.js';
import { type AdminRequest, drainOn, parseRequest, upgradeOptions } from './admin-requests.js';
import type { Broker } from './broker.js';
import { checkRevokeDeadline } from './lease.js';
import { TopSnapshot } from './observe/top-snapshot.js';
import { giveToGroup } from './own-sockets.js';

/**
 * Flow control, as on the vfio-user connections (src/vfio/user/connection.ts),
 * so that an admin client costs the broker a bounded amount whatever it does:
 * reading stops while ADMIN_MAX_PENDING requests are being handled or more
 * than ADMIN_REPLY_HIGH_WATER reply bytes wait for the client to read them,
 * and resumes when both are back under. Requests already read still get their
 * replies, so the backlog passes the high-water mark by at most
 * ADMIN_MAX_PENDING replies; past ADMIN_REPLY_HARD_LIMIT (a client that
 * pipelines several ~1 MiB replies, `leases` of thousands, and reads none of
 * them) the connection is cut.
 */
export const ADMIN_MAX_PENDING = 16;
export const ADMIN_REPLY_HIGH_WATER = 256 * 1024;
export const ADMIN_REPLY_HARD_LIMIT = 4 * 1024 * 1024;
/**
 * The longest reply sent: what a client's receive buffer takes whole (SeqpacketSocket's default, 1 MiB + 4 KiB,
 * adminRequest's). Each connection's SO_SNDBUF is raised to carry it: at the default (net.core.wmem_default,
 * ~212 KB) a longer reply failed sendmsg with EMSGSIZE, which once closed the connection with every request
 * pending on it. A longer reply (or one the kernel still refuses: without CAP_NET_ADMIN, net.core.wmem_max caps
 * the buffer) is answered with an EMSGSIZE error naming the op and the size.
 */
export const ADMIN_MAX_REPLY = 1024 * 1024;

/**
 * How admin connections read: admin requests carry no fds, so none are taken (maxFds 0: the kernel drops any
 * sent unopened; the request is still served). With the default, all 253 a peer sent were installed in the
 * broker, then closed.
 */
const ADMIN_SOCKET = { maxFds: 0 } as const;

const json = (v: unknown) =>
  Buffer.from(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x)));

export class AdminServer {
  readonly #server: SeqpacketServer;
  readonly #broker: Broker;
  readonly path: string;
  /** `devlease top`'s view, made on first use. */
  #top: TopSnapshot | null = null;
  /** Accept failures, at most a few lines per errno per interval whatever their rate. */
  readonly #errors: RateLimitedLog;

  /** Open connections in all and per uid, and their idle deadline (admin-limits.ts). */
  readonly #limits: AdminConnectionLimits;

  /**
   * `listening`: a socket systemd made (socket activation): its mode and group are the socket unit's.
   * `limits`: admin-limits.ts's ADMIN_LIMITS unless an embedder (or a test) asks for others.
   */
  constructor(broker: Broker, path: string, listening?: Fd, limits: Partial<AdminLimits> = {}) {
    this.#broker = broker;
    this.path = path;
    this.#limits = new AdminConnectionLimits(limits, (line) => broker.log(line));
    this.#errors = new RateLimitedLog((line) => broker.log(line));
    const { mode, group } = broker.config.admin;
    if (listening) {
      this.#server = SeqpacketServer.fromListening(listening, path, { socket: ADMIN_SOCKET });
    } else {
      this.#server = SeqpacketServer.listen(path, { mode, socket: ADMIN_SOCKET });
      if (group !== null) {
        try {
          giveToGroup(path, group, 'admin.group');
        } catch (err) {
          this.#server.close(); // the start fails: nothing of it may stay listening (own-sockets.ts)
          throw err;
        }
      }
    }
    this.#server.on('connection', (sock: SeqpacketSocket) => this.#accept(sock));
    // An accept that fails (EMFILE, ENOMEM) pauses accepting for a while (unix-server.ts) and is reported
    // here; without a listener the 'error' event was an uncaught exception that took the broker down.
    this.#server.on('error', (err: Error & { code?: string }) =>
      this.#errors.log(err.code ?? 'error', `admin socket: accept failed: ${err.message}`),
    );
  }

  /**
   * Why the peer may not use the admin socket, or null if it may: root, the broker's user, or a member of
   * admin.group by primary gid (SO_PEERCRED) or supplementary group (SO_PEERGROUPS), both as they were at
   * connect(). The groups were once read from /proc/<pid>/status at accept: a peer that had exited, its socket
   * passed on, and whose pid a group member's process then got, was granted with that process's groups. When
   * SO_PEERGROUPS fails nothing else tells the groups of that connect(): refused.
   */
  #refusal(sock: SeqpacketSocket, cred: PeerCred): string | null {
    const group = this.#broker.config.admin.group;
    if (cred.uid === 0 || cred.uid === process.getuid?.()) return null;
    const notMember = 'the admin socket is for root or the admin group';
    if (group === null) return notMember;
    if (cred.gid === group) return null;
    let groups: number[];
    try {
      groups = sock.peerGroups();
    } catch (err) {
      this.#errors.log(
        'peergroups',
        `admin socket: refused a connection of pid ${cred.pid}: ${(err as Error).message}`,
      );
      return `${notMember}; the groups of uid ${cred.uid} could not be read (${(err as Error).message})`;
    }
    return groups.includes(group) ? null : notMember;
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
    const sock = new SeqpacketSocket(fd, ADMIN_SOCKET);
    this.#accept(sock, true);
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

  /** Sends a refusal, if the peer still listens, and closes. */
  #refuse(sock: SeqpacketSocket, code: string, error: string): void {
    try {
      sock.send(json({ ok: false, code, error }));
    } catch {
      // gone already (EPIPE): the refusal has no one to go to
    } finally {
      sock.close();
    }
  }

  /** `adopted`: handed over by the broker this one took over from, which admitted it: counted, not refused. */
  #accept(sock: SeqpacketSocket, adopted = false): void {
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
    const refusal = this.#refusal(sock, cred);
    if (refusal !== null) {
      this.#refuse(sock, 'EACCES', refusal);
      return;
    }
    const release = this.#limits.admit(cred.uid, pid, adopted, (why) =>
      this.#refuse(sock, 'EAGAIN', `too many admin connections: ${why}; close some and retry`),
    );
    if (!release) return;
    // Room for the longest reply (ADMIN_MAX_REPLY); replies are small but for a broker with many leases.
    let sndbuf = 0; // not known: the kernel's EMSGSIZE tells
    try {
      sndbuf = native.setSendBuffer(sock.fd.fd, ADMIN_MAX_REPLY / 2 + 16 * 1024); // the kernel doubles it
    } catch (err) {
      this.#errors.log('sndbuf', `admin socket: SO_SNDBUF: ${(err as Error).message}`);
    }
    const conn = { pending: 0, sndbuf };
    this.#conns.set(sock, conn);
    // Closed after idleMs without a request; not while held: an upgrade is about to hand it over.
    const idle = this.#limits.idleTimer(
      cred.uid,
      pid,
      () => sock.close(),
      () => this.#held,
    );
    idle.arm();
    sock.on('close', () => {
      idle.disarm();
      this.#conns.delete(sock);
      release();
    });
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
      for (const fd of msg.fds) fd.close(); // none: ADMIN_SOCKET takes none
      conn.pending++;
      idle.disarm();
      flowControl();
      let op = '';
      void (async () => {
        const req = parseRequest(msg.data);
        op = typeof req.op === 'string' ? req.op : '';
        return this.#handle(req, sock, cred);
      })()
        .then((result) => ({ ok: true, result }))
        .catch((err: Error & { code?: string }) => ({
          ok: false,
          error: err.message,
          code: err.code ?? 'EINVAL',
        }))
        .then((reply) => {
          conn.pending--;
          if (sock.closed) return;
          if (!this.#send(sock, reply, op, conn.sndbuf)) return;
          if (conn.pending === 0) idle.arm();
          flowControl();
        });
    });
  }

  /**
   * Sends a reply, or an EMSGSIZE error in its place when it is too long to send; false if the peer is gone.
   * `sndbuf`: the socket's send buffer (0: not known). The kernel refuses a message longer than it less 32
   * bytes, on the spot or, queued behind unread replies, later, when that would close the connection: checked
   * here first. Without CAP_NET_ADMIN, net.core.wmem_max caps the buffer below ADMIN_MAX_REPLY.
   */
  #send(sock: SeqpacketSocket, reply: unknown, op: string, sndbuf: number): boolean {
    const data = json(reply);
    const tooBig = (why: string) =>
      json({
        ok: false,
        code: 'EMSGSIZE',
        error: `the reply to ${op ? JSON.stringify(op.slice(0, 32)) : 'the request'} is ${data.length} bytes: ${why}`,
      });
    const kernelLimit = "more than the socket's send buffer takes (net.core.wmem_max caps it)";
    let out = data;
    if (data.length > ADMIN_MAX_REPLY) out = tooBig(`more than an admin reply carries (${ADMIN_MAX_REPLY})`);
    else if (sndbuf > 0 && data.length > sndbuf - 64) out = tooBig(`${kernelLimit}: ${sndbuf} bytes`);
    try {
      sock.send(out);
      return true;
    } catch (err) {
      if (!isSysError(err, 'EMSGSIZE')) {
        sock.close(); // the peer is gone (EPIPE)
        return false;
      }
    }
    try {
      sock.send(tooBig(kernelLimit));
      return true;
    } catch {
      sock.close();
      return false;
    }
  }

  async #handle(req: AdminRequest, sock: SeqpacketSocket, peer: PeerCred): Promise<unknown> {
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
        if (typeof req['id'] !== 'string') throw new DevleaseError('EINVAL', 'revoke needs "id"');
        // Checked here, before any lease is touched: a deadline past setTimeout's range once reclaimed at once.
        if (req['deadlineMs'] !== undefined) checkRevokeDeadline(req['deadlineMs']);
        const lease = b.leases.revoke(req['id'], req['deadlineMs']);
        return lease.summary();
      }
      case 'drain':
        b.leases.draining = drainOn(req);
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
        const p = b.upgrade(upgradeOptions(req, peer));
        // Recorded only if this request started the upgrade: one refused (EBUSY) once took the place of the
        // upgrade's own asker and then cleared it, and a handover's new broker could not answer that asker.
        const mine = b.upgrading === p;
        if (mine) this.#asker = sock;
        try {
          return await p;
        } finally {
          if (mine && this.#asker === sock) this.#asker = null;
        }
      }
      case 'top':
        this.#top ??= new TopSnapshot(b);
        return this.#top.snapshot();
      default:
        throw new DevleaseError('EINVAL', `unknown op ${JSON.stringify(req.op)}`);
    }
  }

  close(): void {
    this.#server.close();
  }
}
