// A listening AF_UNIX socket, SOCK_STREAM (StreamServer: the vfio-user wire)
// or SOCK_SEQPACKET (SeqpacketServer: devlease's admin socket). Accepted
// connections are emitted as sockets of the matching class ('connection');
// with no 'connection' listener they are closed at once.
//
// accept() failures (EMFILE, ENFILE, ENOBUFS...) are reported once per
// back-off ('error') and accepting pauses for ACCEPT_BACKOFF_MS: the
// listener stays readable while the backlog is non-empty, so retrying at
// once would spin the process at 100 % and flood the log.
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { closedError, SysError } from '../errors.js';
import { Fd } from './fd.js';
import { native } from './native.js';
import { SeqpacketSocket, type SeqpacketSocketOptions } from './seqpacket-socket.js';
import { StreamSocket, type StreamSocketOptions } from './stream-socket.js';
import { READABLE, Watch } from './watch.js';

export const ACCEPT_BACKOFF_MS = 100;

export interface UnixListenOptions {
  /** Permission bits of the socket file (default 0o600: only this user may connect). */
  mode?: number;
  /** listen(2) backlog (default 511). */
  backlog?: number;
}

export interface SeqpacketListenOptions extends UnixListenOptions {
  /** Options for accepted sockets. */
  socket?: SeqpacketSocketOptions;
}

export interface StreamListenOptions extends UnixListenOptions {
  /** Options for accepted sockets (framing is required). */
  socket: StreamSocketOptions;
}

/**
 * Removes the socket file at `path` if it is still the one of `inode`: a server that replaced it (a stale-socket
 * bind, an upgrade's new broker) owns the file now.
 */
export function unlinkOwnSocket(path: string, inode: bigint): void {
  try {
    if (lstatSync(path, { bigint: true }).ino === inode) unlinkSync(path);
  } catch {
    // already removed (or replaced and removed) by someone else: nothing of ours is left
  }
}

/**
 * bind()'s EADDRINUSE for a path that holds a file or folder, not a socket: said as such. "Address already in
 * use" sent the reader looking for another server, where only a socket would be replaced when stale.
 */
export function inTheWay(path: string, err: unknown): unknown {
  if (!(err instanceof SysError) || err.code !== 'EADDRINUSE') return err;
  try {
    if (lstatSync(path).isSocket()) return err;
  } catch {
    return err;
  }
  return new SysError('bind', 'EADDRINUSE', `${path} is in the way: it exists and is not a socket`);
}

export class UnixServer<S extends { close(): void }> extends EventEmitter {
  readonly path: string;
  #fd: Fd | null;
  #watch: Watch;
  /** The socket file's inode, unlinked at close() if still there; null: the file is not ours (systemd's). */
  #inode: bigint | null;
  #adopt: (fd: Fd) => S;
  #backoff: NodeJS.Timeout | null = null;

  /**
   * Binds and listens at `path`. A stale socket file (nobody accepting) is
   * replaced; a live one gives EADDRINUSE (the live server sees the probe as
   * a connection that hangs up at once). The file gets `mode` before
   * listen(), so it is never reachable with looser permissions.
   */
  static listenAs<S extends { close(): void }>(
    path: string,
    stream: boolean,
    opts: UnixListenOptions,
    adopt: (fd: Fd) => S,
  ): UnixServer<S> {
    let raw: number;
    try {
      raw = native.unixListen(path, opts.mode ?? 0o600, opts.backlog ?? 511, stream);
    } catch (err) {
      throw inTheWay(path, err);
    }
    const fd = new Fd(raw);
    try {
      return new UnixServer(path, fd, lstatSync(path, { bigint: true }).ino, adopt);
    } catch (err) {
      fd.close();
      throw err;
    }
  }

  /**
   * Serves a socket that is already listening (socket activation: systemd made it, with its mode and
   * group). The socket file stays when the server closes: it belongs to whoever made it. Owns `fd`.
   */
  static fromListening<S extends { close(): void }>(
    fd: Fd,
    path: string,
    adopt: (fd: Fd) => S,
  ): UnixServer<S> {
    return new UnixServer(path, fd, null, adopt);
  }

  private constructor(path: string, fd: Fd, inode: bigint | null, adopt: (fd: Fd) => S) {
    super();
    this.path = path;
    this.#fd = fd;
    this.#inode = inode;
    this.#adopt = adopt;
    // On failure, listenAs() closes fd.
    this.#watch = new Watch(fd.fd, READABLE, (status) => this.#onReadable(status));
  }

  get closed(): boolean {
    return this.#fd === null;
  }

  /**
   * Stop / restart accepting (a broker upgrade's quiesce): connections wait in the listen backlog meanwhile.
   * Idempotent.
   */
  pause(): void {
    if (this.#fd !== null && this.#backoff === null) this.#watch.events = 0;
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    if (this.#fd !== null && this.#backoff === null) this.#watch.events = READABLE;
  }

  #paused = false;

  /** Stops accepting and removes the socket file (if it is still ours). Idempotent. */
  close(): void {
    const fd = this.#fd;
    if (fd === null) return;
    this.#fd = null;
    if (this.#backoff) clearTimeout(this.#backoff);
    this.#backoff = null;
    this.#watch.stop();
    fd.close();
    if (this.#inode !== null) unlinkOwnSocket(this.path, this.#inode);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  ref(): void {
    this.#watch.ref();
  }

  unref(): void {
    this.#watch.unref();
  }

  /** The listening descriptor (owned by the server). */
  get fd(): Fd {
    if (this.#fd === null) throw closedError('server');
    return this.#fd;
  }

  #onReadable(status: number): void {
    if (status < 0) {
      this.emit('error', new SysError('accept', 'EBADF', `poll failed (${status})`));
      return;
    }
    while (this.#fd !== null && this.#backoff === null && !this.#paused) {
      let conn: number;
      try {
        conn = native.unixAccept(this.#fd.fd);
      } catch (err) {
        this.#pauseAccepting();
        this.emit('error', err);
        return;
      }
      if (conn < 0) return;
      const fd = new Fd(conn);
      let socket: S;
      try {
        socket = this.#adopt(fd);
      } catch (err) {
        // A socket that cannot start (its poll watch failed: fail-nth walk) is closed and reported; thrown
        // from here it was an uncaught exception in the event loop.
        fd.close();
        this.emit('error', err);
        continue;
      }
      if (!this.emit('connection', socket)) socket.close();
    }
  }

  #pauseAccepting(): void {
    this.#watch.events = 0;
    this.#backoff = setTimeout(() => {
      this.#backoff = null;
      if (this.#fd === null || this.#paused) return;
      this.#watch.events = READABLE;
    }, ACCEPT_BACKOFF_MS);
    this.#backoff.unref();
  }
}

export type SeqpacketServer = UnixServer<SeqpacketSocket>;
export const SeqpacketServer = {
  listen(path: string, opts: SeqpacketListenOptions = {}): SeqpacketServer {
    return UnixServer.listenAs(path, false, opts, (fd) => new SeqpacketSocket(fd, opts.socket));
  },
  /** A listening SEQPACKET socket made by someone else (see UnixServer.fromListening). */
  fromListening(fd: Fd, path: string, opts: { socket?: SeqpacketSocketOptions } = {}): SeqpacketServer {
    return UnixServer.fromListening(fd, path, (c) => new SeqpacketSocket(c, opts.socket));
  },
};

export type StreamServer = UnixServer<StreamSocket>;
export const StreamServer = {
  listen(path: string, opts: StreamListenOptions): StreamServer {
    return UnixServer.listenAs(path, true, opts, (fd) => new StreamSocket(fd, opts.socket));
  },
  /** A listening SOCK_STREAM socket made by someone else (see UnixServer.fromListening). */
  fromListening(fd: Fd, path: string, opts: { socket: StreamSocketOptions }): StreamServer {
    return UnixServer.fromListening(fd, path, (c) => new StreamSocket(c, opts.socket));
  },
};
