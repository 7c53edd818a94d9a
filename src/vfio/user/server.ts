// A vfio-user server: accepts connections (a listening socket path, or
// sockets handed over with serveSocket), gives each its own device model
// from createDevice(), and serves it through a VfioUserConnection.
import { EventEmitter } from 'node:events';
import { closedError, VfioError } from '../../errors.js';
import { type Fd, StreamServer } from '../../sys/index.js';
import { MAX_FDS } from '../../sys/native.js';
import { type AdoptedSession, VfioUserConnection } from './connection.js';
import type { ConnectionInfo, VfioUserDeviceModel } from './device-model.js';
import { flushFdsLostLog } from './fds-lost.js';
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_MSG_FDS,
  HEADER_SIZE,
  SPEC_DEFAULT_MAX_DMA_MAPS,
} from './protocol.js';
import { type MessageSocket, VFIO_USER_FRAMING } from './transport.js';
import { minPageSize } from './version.js';

export interface VfioUserServerOptions {
  /** Called once per connection, before its VERSION is answered; a VfioError refusal becomes the VERSION error. */
  createDevice(
    conn: ConnectionInfo,
    socket: MessageSocket,
  ): VfioUserDeviceModel | Promise<VfioUserDeviceModel>;
  /** Most fds accepted per message (advertised as max_msg_fds). Default 16, at most MAX_FDS (253). */
  maxMsgFds?: number;
  /** Largest REGION_READ/WRITE count accepted (max_data_xfer_size). Default 65536. */
  maxDataXferSize?: number;
  /** Advertised max_dma_maps (enforced by the model). Default 65535. */
  maxDmaMaps?: number;
  /** Advertised pgsizes; DMA maps must be aligned to the smallest. Default 4096. */
  pgsizes?: number;
  /** Where protocol violations and unexpected model exceptions are reported. Default: console.warn. */
  log?: (message: string, err?: unknown) => void;
  /**
   * What bounds connections before their VERSION succeeds (util/admission.ts's Admission: the simulator's
   * socket). Absent: every connection is served until it ends (the broker admits its lease connections itself,
   * in createDevice: broker/client-sessions.ts).
   */
  admission?: PendingAdmission;
}

/** Counts connections that have not completed VERSION, each against limits and a deadline. */
export interface PendingAdmission {
  /**
   * Count a new connection of `uid` until done() (its VERSION succeeded, or it ended), or refuse it: null, and
   * the server closes it at once. `onDeadline`: called if it is still counted when its time is up (closed then).
   */
  admit(uid: number, pid: number, onDeadline: () => void): { done(): void } | null;
  /** The server closes: pending log summaries are written. */
  flush?(): void;
}

export interface VfioUserListenOptions extends VfioUserServerOptions {
  /** Socket file mode. Default 0o600. */
  mode?: number;
  /** An already listening socket to serve (socket activation) instead of binding `path`; owned from here. */
  listening?: Fd;
}

export class VfioUserServer extends EventEmitter {
  #options: VfioUserServerOptions;
  #config: ConstructorParameters<typeof VfioUserConnection>[2];
  #listener: StreamServer | null = null;
  /** Connections not yet past VERSION, when the server was given an admission. */
  #admission: PendingAdmission | null = null;
  #connections = new Set<VfioUserConnection>();
  #nextId = 1;
  #closed = false;

  /** Listen on a unix SOCK_STREAM socket path (the vfio-user wire) and serve every client that connects. */
  static listen(path: string, opts: VfioUserListenOptions): VfioUserServer {
    const server = new VfioUserServer(opts);
    // Room for the largest request accepted (REGION_WRITE of max_data_xfer_size) and then some:
    // a peer announcing anything longer is cut off by the framing.
    const maxMessage = HEADER_SIZE + 16 + server.#config.maxDataXferSize + 4096;
    // Its clients' fds are taken only while the closer thread keeps up, with them and with their uid's share of
    // its queue (StreamSocketOptions.untrustedPeer), and no more per message than advertised (max_msg_fds): the
    // kernel drops the rest unopened and the peer is cut off (EPROTO), as the connection cuts off one whose
    // message carries more. Without maxFds all 253 were installed first, then closed: each close possibly
    // waiting for a FUSE server, on the closer thread's queue.
    const socket = {
      framing: VFIO_USER_FRAMING,
      maxMessage,
      maxFds: server.#config.maxMsgFds,
      untrustedPeer: true,
    };
    server.socketOptions = socket;
    const listener = opts.listening
      ? StreamServer.fromListening(opts.listening, path, { socket })
      : StreamServer.listen(path, { mode: opts.mode ?? 0o600, socket });
    server.#listener = listener;
    listener.on('error', (err: Error) => server.#config.log('vfio-user server: accept failed', err));
    listener.on('connection', (socket: MessageSocket) => {
      try {
        // Refused (closed; logged, rate-limited, by the admission) when past the limits.
        server.#serve(socket);
      } catch (err) {
        server.#config.log('vfio-user server: cannot serve connection', err);
      }
    });
    return server;
  }

  constructor(opts: VfioUserServerOptions) {
    super();
    const maxMsgFds = opts.maxMsgFds ?? DEFAULT_MAX_MSG_FDS;
    const maxDataXferSize = opts.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE;
    const pgsizes = opts.pgsizes ?? 4096;
    if (!Number.isInteger(maxMsgFds) || maxMsgFds < 1 || maxMsgFds > MAX_FDS) {
      throw new RangeError(`maxMsgFds must be an integer in [1, ${MAX_FDS}]`);
    }
    if (!Number.isInteger(maxDataXferSize) || maxDataXferSize < 1) {
      throw new RangeError('maxDataXferSize must be a positive integer');
    }
    if (!Number.isSafeInteger(pgsizes) || pgsizes <= 0)
      throw new RangeError('pgsizes must be a positive integer');
    this.#options = opts;
    this.#admission = opts.admission ?? null;
    this.#config = {
      maxMsgFds,
      maxDataXferSize,
      maxDmaMaps: opts.maxDmaMaps ?? SPEC_DEFAULT_MAX_DMA_MAPS,
      pgsizes,
      pageSize: minPageSize(pgsizes),
      log: opts.log ?? ((message, err) => console.warn(`devlease: ${message}`, err ?? '')),
    };
  }

  /** How this server's connection sockets are made (an upgrade makes them from handed-over fds alike). */
  socketOptions: { framing: typeof VFIO_USER_FRAMING; maxMessage: number; maxFds?: number } = {
    framing: VFIO_USER_FRAMING,
    maxMessage: HEADER_SIZE + 16 + DEFAULT_MAX_DATA_XFER_SIZE + 4096,
  };

  /** The socket path when listening, else null. */
  get path(): string | null {
    return this.#listener?.path ?? null;
  }

  /** The connections being served. */
  get connections(): ReadonlySet<VfioUserConnection> {
    return this.#connections;
  }

  /** Serve an already-connected socket (the server takes ownership of it); EAGAIN when the admission refuses it. */
  serveSocket(socket: MessageSocket): VfioUserConnection {
    const conn = this.#serve(socket);
    if (conn === null) throw new VfioError('EAGAIN', 'too many connections have not completed VERSION');
    return conn;
  }

  /** serveSocket, or null when the admission refused the connection (closed, and logged there). */
  #serve(socket: MessageSocket): VfioUserConnection | null {
    if (this.#closed) {
      socket.close();
      throw closedError('VfioUserServer');
    }
    let cred = { pid: 0, uid: -1, gid: -1 };
    try {
      cred = socket.peerCred();
    } catch {
      // not a unix socket peer (cannot happen with StreamSocket); keep the unknown identity
    }
    let conn: VfioUserConnection | null = null;
    const admitted = this.#admission?.admit(cred.uid, cred.pid, () =>
      conn?.close('no VERSION completed in time'),
    );
    if (admitted === null) {
      // Closed at once: a refused connection costs nothing past its accept.
      socket.close();
      return null;
    }
    try {
      conn = new VfioUserConnection({ id: this.#nextId++, cred }, socket, this.#config, (c, s) =>
        this.#options.createDevice(c, s),
      );
    } catch (err) {
      admitted?.done();
      throw err;
    }
    if (admitted) conn.onVersion = () => admitted.done();
    this.#connections.add(conn);
    const served = conn;
    void conn.closed.then((reason) => {
      admitted?.done();
      this.#connections.delete(served);
      this.emit('disconnect', served, reason);
    });
    this.emit('connection', conn);
    return conn;
  }

  /** Stop / restart accepting connections (they wait in the backlog). */
  pauseAccepting(): void {
    this.#listener?.pause();
  }
  resumeAccepting(): void {
    this.#listener?.resume();
  }

  /** The listening socket's descriptor (owned by the server), or null. */
  get listeningFd(): Fd | null {
    return this.#listener?.fd ?? null;
  }

  /** Serve a session another process negotiated (a broker upgrade): `model` serves its requests from now on. */
  adoptSocket(
    socket: MessageSocket,
    model: VfioUserDeviceModel,
    adopted: AdoptedSession,
  ): VfioUserConnection {
    if (this.#closed) {
      socket.close();
      throw closedError('VfioUserServer');
    }
    const cred = socket.peerCred();
    const conn = new VfioUserConnection(
      { id: this.#nextId++, cred },
      socket,
      this.#config,
      () => model,
      adopted,
    );
    this.#connections.add(conn);
    void conn.closed.then((reason) => {
      this.#connections.delete(conn);
      this.emit('disconnect', conn, reason);
    });
    return conn;
  }

  /** Stop listening, close every connection and wait until every model has been told. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listener?.close();
      for (const c of this.#connections) c.close('server closed');
      this.#admission?.flush?.();
      // After the connections' close: a refusal they log meanwhile is counted in this last line, not after it.
      flushFdsLostLog(this.#config);
    }
    await Promise.all([...this.#connections].map((c) => c.closed));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
