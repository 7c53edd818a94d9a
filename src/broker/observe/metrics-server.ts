// The Prometheus endpoint: GET /metrics over HTTP on a unix socket or HOST:PORT (config [metrics] listen).
// Bounded: a few connections at once, a few per peer, each request must arrive within deadlines that are
// enforced within a second (not at Node's default 30 s sweep), each response must be taken by the peer, and a
// connection kept alive must bring its next request within 5 s of its last response.
import { lstatSync, rmSync } from 'node:fs';
import { createServer, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { DevleaseError } from '../../errors.js';
import { Fd } from '../../sys/fd.js';
import { native } from '../../sys/native.js';
import { RateLimitedLog } from '../../sys/rate-limited-log.js';
import { inTheWay, unlinkOwnSocket } from '../../sys/unix-server.js';
import type { Broker } from '../broker.js';
import { BrokerMetrics } from './metrics.js';
import { addressKey } from './peer-key.js';

const MAX_CONNECTIONS = 16;
/**
 * Connections one peer (an IPv4 address, an IPv6 /64, a unix socket's uid: peer-key.ts) may hold at once: a
 * scraper needs one, and a peer that opens and idles on every slot would otherwise refuse every scrape until the
 * header deadline drops them.
 */
const MAX_PER_PEER = 4;
/** A scraper sends its request at once: a connection still without headers after this is dropped. */
const HEADERS_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 10_000;
/**
 * How often Node checks those deadlines. Its default (30 s) let idle or drip-feeding connections hold the
 * slots for up to 30 s past the deadline, so a few of them refused scrapes for half a minute at a time.
 */
const CHECK_INTERVAL_MS = 1_000;
/**
 * A response of which the broker can write nothing for this long (its peer is not reading) is dropped with its
 * connection. With many leases a response outgrows the socket buffer, and what the kernel does not take Node
 * holds in the broker's memory: a peer that never read held that and a connection slot for as long as it liked
 * (requestTimeout stops counting once the request is in). What counts is the write's progress (the part of the
 * response still waiting for the socket shrank since the last check), checked every 3 s from the response's
 * send: not the socket's inactivity timeout, which a read restarts, so a peer that never read but sent a blank
 * line every second (which the HTTP parser skips: no request, no deadline) kept its connection for good. A
 * scraper reads a response as it comes: 3 s in which the broker could hand the kernel nothing more is a scraper
 * that is stuck, or no scraper. (On a unix socket the kernel takes more once the peer has read all but about a
 * quarter of the socket buffer: a reader slower than that per 3 s, some 50 KB/s here, is cut.)
 */
const WRITE_STALL_MS = 3_000;
/**
 * A connection kept alive after a response must bring its next request (its headers in full) within this, or
 * it is closed. Node's keepAliveTimeout is the socket's inactivity timer, which every byte read restarts, and
 * no request deadline runs between requests: a peer that sent a blank line (which the HTTP parser skips: no
 * request begins) every 2 s kept its connection for good, and 16 such, 4 a peer, refused every scrape. This
 * one is armed when a response has been written and only the next request clears it.
 */
const KEEP_ALIVE_IDLE_MS = 5_000;

export class MetricsServer {
  readonly metrics: BrokerMetrics;
  /** Where it listens: the socket path, or HOST:PORT with the port bound (for `:0`). */
  readonly endpoint: string;
  readonly #server: Server;
  /** A dup of the listening socket, made for an upgrade's state (sent as a dup, closed with the server). */
  #handoverFd: Fd | null = null;
  /**
   * The socket file this broker serves and its inode: removed at close if it is still that file (not once
   * handed over, nor when someone has bound the path anew since).
   */
  #socket: { path: string; inode: bigint } | null = null;
  /** An upgrade holds the broker: scrapes are answered 503 (hold()/unhold()). */
  #held = false;
  #closed = false;

  private constructor(metrics: BrokerMetrics, server: Server, endpoint: string) {
    this.metrics = metrics;
    this.#server = server;
    this.endpoint = endpoint;
  }

  hold(): void {
    this.#held = true;
  }

  unhold(): void {
    this.#held = false;
  }

  /**
   * `inherited`: the listening socket an upgrade's old broker handed over for the same `listen`, served as it
   * is: the old broker still listens on it until it exits (binding the address again failed with EADDRINUSE,
   * and a socket path was unlinked from under the old broker, which a rollback left without its endpoint).
   */
  static async start(
    broker: Broker,
    inherited: Fd | null = null,
    opts: { replaceLive?: boolean } = {},
  ): Promise<MetricsServer> {
    const { listen, mode } = broker.config.metrics;
    if (!listen) throw new Error('metrics.listen is not set');
    const metrics = new BrokerMetrics(broker);
    // Errors of the endpoint are logged rate-limited: each can repeat at every connection.
    const errors = new RateLimitedLog((line) => broker.log(line));
    const send = (res: ServerResponse, status: number, headers: OutgoingHttpHeaders, body: string) =>
      respond(res, status, headers, body, (peer) =>
        errors.log(
          'write-stall',
          `metrics: dropped a connection on ${listen} (${peer}): it took none of its response for ${WRITE_STALL_MS / 1000} s`,
        ),
      );
    let self: MetricsServer | null = null;
    const server = createServer({ connectionsCheckingInterval: CHECK_INTERVAL_MS }, (req, res) => {
      // A scraper waits for each response before it sends its next request. A request sent behind one still in
      // progress (pipelined: Node gives its response no socket until its turn) would build a whole response
      // and hold it until the peer took those before it, and a thousand such requests fit in one packet: the
      // connection is dropped instead. (Node calls this for the rest of the requests it had read all the same.)
      if (req.socket.destroyed) return;
      if (res.socket === null) {
        errors.log(
          'pipelined',
          `metrics: dropped a connection on ${listen} (${peerOf(req.socket)}): it sent a request before it had its last response`,
        );
        req.socket.destroy();
        return;
      }
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        send(res, 404, { 'content-type': 'text/plain' }, 'not found: GET /metrics\n');
        return;
      }
      // A scrape reads the device: not while an upgrade holds the device connection (the new broker reads its
      // replies), nor in the new broker before the commit.
      if (self === null || self.#held) {
        send(
          res,
          503,
          { 'content-type': 'text/plain', 'retry-after': '1' },
          'the broker is being upgraded: scrape again\n',
        );
        return;
      }
      // The peer may be gone by the time the text is ready: the response is then written nowhere (Node drops
      // writes to a destroyed socket), and the text is garbage once this returns.
      metrics.metrics().then(
        (text) => send(res, 200, { 'content-type': metrics.contentType }, text),
        (err: Error) => send(res, 500, { 'content-type': 'text/plain' }, `${err.message}\n`),
      );
    });
    server.maxConnections = MAX_CONNECTIONS;
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.headersTimeout = HEADERS_TIMEOUT_MS;
    server.keepAliveTimeout = KEEP_ALIVE_IDLE_MS;
    limitPerPeer(server);
    limitIdle(server);
    const path = listen.startsWith('/') ? listen : null;
    let fd: number | null = null;
    try {
      // A path is bound here, not by server.listen(path): libuv unlinks a path it bound when the server
      // closes, which an upgrade's old broker does as it stops accepting (stopListening) while the new one
      // serves that socket. unixListen removes only a stale socket file (nobody listening) and sets the mode
      // before anyone can connect.
      // An upgrade from a broker that did not hand its socket over: its live socket file is replaced, as that
      // broker's own upgrades did (a rollback then leaves it without its path).
      if (path && !inherited && opts.replaceLive) rmSync(path, { force: true });
      fd = inherited?.release() ?? (path ? native.unixListen(path, mode, 64, true) : null);
      await new Promise<void>((resolve, reject) => {
        const listening = () => {
          server.off('error', reject);
          resolve();
        };
        server.once('error', reject);
        if (fd !== null) server.listen({ fd: fd }, listening);
        else {
          const i = listen.lastIndexOf(':');
          server.listen(Number(listen.slice(i + 1)), listen.slice(0, i).replace(/^\[|\]$/g, ''), listening);
        }
      });
    } catch (e) {
      server.close();
      metrics.close();
      const err = path ? inTheWay(path, e) : e;
      throw Object.assign(new Error(`metrics: cannot listen on ${listen}: ${(err as Error).message}`), {
        code: (err as { code?: string }).code ?? 'EINVAL',
      });
    }
    // Once listening, an 'error' is an accept that failed (ENFILE, ENOMEM, ENOBUFS): the server goes on
    // listening, so it is logged (rate-limited: it can repeat at every connection) and nothing more. With no
    // listener it was an uncaught exception that ended the broker; the listen's once-listener only hid the first.
    server.on('error', (err: Error & { code?: string }) =>
      errors.log(err.code ?? 'error', `metrics: accept failed on ${listen}: ${err.message}`),
    );
    let endpoint = listen;
    if (!path) {
      const a = server.address() as AddressInfo;
      endpoint = `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    }
    const m = new MetricsServer(metrics, server, endpoint);
    m.#socket = path ? socketFileAt(path) : null;
    self = m;
    return m;
  }

  /** The listening socket, for an upgrade's state (a dup this server owns). */
  handoverFd(): Fd {
    if (this.#handoverFd && !this.#handoverFd.closed) return this.#handoverFd;
    const fd = (this.#server as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0)
      throw new DevleaseError(
        'EINVAL',
        `metrics: the listening socket on ${this.endpoint} has no descriptor`,
      );
    this.#handoverFd = new Fd(native.dup(fd));
    return this.#handoverFd;
  }

  /**
   * An upgrade committed: the new broker serves the listening socket from now on, so this one accepts no more
   * (a scrape it accepted would die with it as it exits: a reset). Idle kept-alive connections are closed; one
   * with a request in progress ends when this process exits.
   */
  stopListening(): void {
    this.#socket = null;
    this.#server.close();
    this.#server.closeIdleConnections();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#handoverFd?.close();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
    this.metrics.close();
    if (this.#socket) unlinkOwnSocket(this.#socket.path, this.#socket.inode);
  }
}

/**
 * Drop a connection at once when its peer already holds MAX_PER_PEER: the peer is the IPv4 address or the IPv6
 * /64 (addressKey), or for a unix socket the uid (SO_PEERCRED; every local peer has no address). Node drops
 * connections past maxConnections before 'connection', so only accepted ones are counted.
 */
function limitPerPeer(server: Server): void {
  const held = new Map<string, number>();
  server.on('connection', (sock: Socket) => {
    const peer = sock.remoteAddress ? addressKey(sock.remoteAddress) : peerOf(sock);
    const n = held.get(peer) ?? 0;
    if (n >= MAX_PER_PEER) {
      sock.destroy();
      return;
    }
    held.set(peer, n + 1);
    sock.once('close', () => {
      const left = (held.get(peer) ?? 1) - 1;
      if (left > 0) held.set(peer, left);
      else held.delete(peer);
    });
  });
}

/**
 * Close a kept-alive connection KEEP_ALIVE_IDLE_MS after its response was written unless its next request has
 * come ('request': its headers are in) by then. What the peer sends meanwhile that is not a request (blank
 * lines) does not count. Prepended: the handler after it may end a response at once.
 */
function limitIdle(server: Server): void {
  const idle = new Map<Socket, NodeJS.Timeout>();
  const clear = (sock: Socket) => {
    clearTimeout(idle.get(sock));
    idle.delete(sock);
  };
  server.on('connection', (sock: Socket) => sock.once('close', () => clear(sock)));
  server.prependListener('request', (req, res) => {
    const sock = req.socket;
    clear(sock);
    res.once('finish', () => {
      if (sock.destroyed) return;
      const t = setTimeout(() => {
        idle.delete(sock);
        sock.destroy();
      }, KEEP_ALIVE_IDLE_MS);
      t.unref();
      idle.set(sock, t);
    });
  });
}

/**
 * Write a response, dropping the connection once the broker can hand the kernel none of what is left of it for
 * WRITE_STALL_MS (`stalled` is told whose). Checked from the send, not the request: the broker's own time to
 * read the device is not the peer's.
 */
function respond(
  res: ServerResponse,
  status: number,
  headers: OutgoingHttpHeaders,
  body: string,
  stalled: (peer: string) => void,
): void {
  res.writeHead(status, headers).end(body);
  const sock = res.socket;
  if (!sock || res.writableFinished) return;
  // libuv's count of bytes still to write (net.Socket's own timeout reads it the same way); what the kernel
  // took at once is not in it.
  const pending = () =>
    (sock as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize;
  let left = pending();
  const check = setInterval(() => {
    const now = pending();
    if (now === undefined || now === 0 || left === undefined || now < left) {
      left = now;
      return;
    }
    clearInterval(check);
    stalled(peerOf(sock));
    sock.destroy();
  }, WRITE_STALL_MS);
  check.unref();
  const done = () => clearInterval(check);
  res.once('finish', done);
  res.once('close', done);
}

function peerOf(sock: Socket): string {
  if (sock.remoteAddress) return `addr ${sock.remoteAddress}`;
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  try {
    if (typeof fd === 'number' && fd >= 0) return `uid ${native.peerCred(fd).uid}`;
  } catch {
    // The peer cannot be told (SO_PEERCRED failed): such peers share one count.
  }
  return 'unknown';
}

/** The socket file at `path` as it is now, or null when there is none (an inherited socket's, removed since). */
function socketFileAt(path: string): { path: string; inode: bigint } | null {
  try {
    return { path, inode: lstatSync(path, { bigint: true }).ino };
  } catch {
    return null;
  }
}
