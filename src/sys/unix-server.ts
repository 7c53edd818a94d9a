// A listening AF_UNIX SOCK_SEQPACKET socket. Accepted connections are
// emitted as SeqpacketSocket ('connection'); with no 'connection' listener
// they are closed at once.
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { closedError } from './errors.js';
import { Fd } from './fd.js';
import { native } from './native.js';
import { SeqpacketSocket, type SeqpacketSocketOptions } from './seqpacket-socket.js';
import { READABLE, Watch } from './watch.js';

export interface SeqpacketListenOptions {
  /** Permission bits of the socket file (default 0o600: only this user may connect). */
  mode?: number;
  /** listen(2) backlog (default 511). */
  backlog?: number;
  /** Options for accepted sockets. */
  socket?: SeqpacketSocketOptions;
}

export class SeqpacketServer extends EventEmitter {
  readonly path: string;
  #fd: Fd | null;
  #watch: Watch;
  #inode: bigint;
  #socketOptions: SeqpacketSocketOptions | undefined;

  /**
   * Binds and listens at `path`. A stale socket file (nobody accepting) is
   * replaced; a live one gives EADDRINUSE (the live server sees the probe as
   * a connection that hangs up at once). The file gets `mode` before
   * listen(), so it is never reachable with looser permissions.
   */
  static listen(path: string, opts: SeqpacketListenOptions = {}): SeqpacketServer {
    const fd = new Fd(native.seqpacketListen(path, opts.mode ?? 0o600, opts.backlog ?? 511));
    try {
      return new SeqpacketServer(path, fd, lstatSync(path, { bigint: true }).ino, opts.socket);
    } catch (err) {
      fd.close();
      throw err;
    }
  }

  private constructor(path: string, fd: Fd, inode: bigint, socketOptions?: SeqpacketSocketOptions) {
    super();
    this.path = path;
    this.#fd = fd;
    this.#inode = inode;
    this.#socketOptions = socketOptions;
    // On failure, listen() closes fd.
    this.#watch = new Watch(fd.fd, READABLE, (status) => this.#onReadable(status));
  }

  get closed(): boolean {
    return this.#fd === null;
  }

  /** Stops accepting and removes the socket file (if it is still ours). Idempotent. */
  close(): void {
    const fd = this.#fd;
    if (fd === null) return;
    this.#fd = null;
    this.#watch.stop();
    fd.close();
    try {
      if (lstatSync(this.path, { bigint: true }).ino === this.#inode) unlinkSync(this.path);
    } catch {
      // already removed (or replaced and removed) by someone else: nothing of ours is left
    }
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

  #onReadable(status: number): void {
    if (status < 0) {
      this.emit('error', Object.assign(new Error(`accept: poll failed (${status})`), { code: 'EBADF' }));
      return;
    }
    while (this.#fd !== null) {
      let conn: number;
      try {
        conn = native.seqpacketAccept(this.#fd.fd);
      } catch (err) {
        // EMFILE/ENFILE and the like: report and try again on the next readiness.
        this.emit('error', err);
        return;
      }
      if (conn < 0) return;
      const socket = new SeqpacketSocket(new Fd(conn), this.#socketOptions);
      if (!this.emit('connection', socket)) socket.close();
    }
  }

  /** The listening descriptor (owned by the server). */
  get fd(): Fd {
    if (this.#fd === null) throw closedError('server');
    return this.#fd;
  }
}
