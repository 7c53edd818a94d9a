// The broker's client connections: each accepted (or handed-over) connection
// becomes a PendingSession — admitted against the per-uid limit of
// connections not yet past VERSION, given the caller's context, and watched
// through a pidfd so the process's exit ends its lease even if the socket
// lingers (an fd inherited by a child).

import { VfioError } from '../errors.js';
import { PidFd, type StreamSocket } from '../sys/index.js';
import type { RateLimitedLog } from '../sys/rate-limited-log.js';
import { Admission } from '../util/admission.js';
import type { ConnectionInfo } from '../vfio/user/device-model.js';
import type { MessageSocket } from '../vfio/user/transport.js';
import type { BrokerConfig } from './config.js';
import type { LeaseTable } from './leases.js';
import { PendingSession } from './pending-session.js';
import { readCallerContext } from './policy.js';
import type { LeaseSession } from './session.js';

/** The limits' config keys, as the admission's lines name them. */
const SOCKETS_KEYS = {
  versionTimeoutMs: 'sockets.version_timeout_ms',
  maxPending: 'sockets.max_pending',
  maxPendingPerUid: 'sockets.max_pending_per_uid',
} as const;

export type SessionEntry = { pending: PendingSession; pidfd: PidFd | null };

export class ClientSessions {
  /** Each connection's session and pidfd, by its socket (an upgrade hands them over). */
  readonly bySocket = new Map<object, SessionEntry>();
  readonly #pidfds = new Set<PidFd>();
  /** Connections not yet past VERSION: counted, limited, and closed at their deadline. */
  readonly #admission: Admission;
  readonly #leases: LeaseTable;
  /** The vfio-user servers' rate-limited log (shared with the broker's servers). */
  readonly #serverLog: RateLimitedLog;

  constructor(
    sockets: BrokerConfig['sockets'],
    leases: LeaseTable,
    log: (msg: string) => void,
    serverLog: RateLimitedLog,
  ) {
    this.#admission = new Admission(sockets, SOCKETS_KEYS, log);
    this.#leases = leases;
    this.#serverLog = serverLog;
  }

  /** The session of a new connection of lease kind `kind`, or of one handed over by an upgrade (`adopted`). */
  create(
    kind: string,
    conn: ConnectionInfo,
    socket: MessageSocket,
    adopted?: { session: LeaseSession; pidfd: PidFd | null },
  ): PendingSession {
    const { pid, uid } = conn.cred;
    if (adopted) {
      const pending = new PendingSession(kind, adopted.session.lease.ctx, this.#leases, () => socket.close());
      pending.adopt(adopted.session);
      this.#watch(socket, pending, adopted.pidfd);
      return pending;
    }
    let session: PendingSession | null = null;
    const admitted = this.#admission.admit(uid, pid, () => session?.versionTimedOut());
    if (!admitted) {
      // Closed at once: it costs nothing more (no pidfd, no /proc reads) and frees its descriptor now.
      socket.close();
      throw new VfioError('EAGAIN', 'too many connections have not completed VERSION');
    }
    const ctx = readCallerContext(pid, uid, conn.cred.gid);
    session = new PendingSession(kind, ctx, this.#leases, () => socket.close());
    session.onVersionDone(() => admitted.done());
    session.onEnd(() => admitted.done());
    let pidfd: PidFd | null = null;
    try {
      // SO_PEERPIDFD names the very process that connected; pidfd_open(pid) is the fallback for other sockets.
      // The cred's pid rides along (the server read SO_PEERCRED when it took the socket; pid 0 if that read
      // failed, and then peerPidfd reads it again): the pidfd's pid is the same number.
      pidfd = 'peerPidfd' in socket ? (socket as StreamSocket).peerPidfd(pid) : PidFd.open(pid);
    } catch (err) {
      // Rate-limited: it fails when descriptors run out, for every connection then.
      this.#serverLog.log(
        'no pidfd',
        `no pidfd for pid ${pid}: ${(err as Error).message}; relying on hang-up alone`,
      );
    }
    this.#watch(socket, session, pidfd);
    return session;
  }

  /** Process exit is noticed through the pidfd even if the socket lingers (an fd inherited by a child). */
  #watch(socket: MessageSocket, session: PendingSession, pidfd: PidFd | null): void {
    this.bySocket.set(socket, { pending: session, pidfd });
    session.onEnd(() => this.bySocket.delete(socket));
    if (!pidfd) return;
    try {
      const p = pidfd;
      this.#pidfds.add(p);
      p.onExit(() => {
        session?.processExited();
        this.#pidfds.delete(p);
        p.close();
      });
      session.onEnd(() => {
        if (this.#pidfds.delete(p)) p.close();
      });
    } catch (err) {
      // A pidfd whose watch could not start is closed here, not kept until the broker stops (fail-nth walk).
      if (this.#pidfds.delete(pidfd)) pidfd.close();
      this.#serverLog.log('no pidfd', `no pidfd watch: ${(err as Error).message}; relying on hang-up alone`);
    }
  }

  /** Idempotent: every pidfd still watched is closed; the admission's rate-limited lines are flushed. */
  close(): void {
    for (const p of this.#pidfds) p.close();
    this.#pidfds.clear();
    this.#admission.flush();
  }
}
