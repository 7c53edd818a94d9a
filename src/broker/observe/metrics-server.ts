// The Prometheus endpoint: GET /metrics over HTTP on a unix socket or HOST:PORT (config [metrics] listen).
// Bounded: a few connections at once, and each request must arrive and be answered within deadlines.
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Broker } from '../broker.js';
import { BrokerMetrics } from './metrics.js';

const MAX_CONNECTIONS = 16;
const REQUEST_TIMEOUT_MS = 10_000;

export class MetricsServer {
  readonly metrics: BrokerMetrics;
  /** Where it listens: the socket path, or HOST:PORT with the port bound (for `:0`). */
  readonly endpoint: string;
  readonly #server: Server;
  #closed = false;

  private constructor(metrics: BrokerMetrics, server: Server, endpoint: string) {
    this.metrics = metrics;
    this.#server = server;
    this.endpoint = endpoint;
  }

  static async start(broker: Broker): Promise<MetricsServer> {
    const { listen, mode } = broker.config.metrics;
    if (!listen) throw new Error('metrics.listen is not set');
    const metrics = new BrokerMetrics(broker);
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: GET /metrics\n');
        return;
      }
      metrics.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    });
    server.maxConnections = MAX_CONNECTIONS;
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.headersTimeout = REQUEST_TIMEOUT_MS;
    server.keepAliveTimeout = 5_000;
    const path = listen.startsWith('/') ? listen : null;
    try {
      if (path) removeStaleSocket(path);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        if (path) server.listen(path, resolve);
        else {
          const i = listen.lastIndexOf(':');
          server.listen(Number(listen.slice(i + 1)), listen.slice(0, i).replace(/^\[|\]$/g, ''), resolve);
        }
      });
      if (path) chmodSync(path, mode);
    } catch (err) {
      server.close();
      metrics.close();
      throw Object.assign(new Error(`metrics: cannot listen on ${listen}: ${(err as Error).message}`), {
        code: (err as { code?: string }).code ?? 'EINVAL',
      });
    }
    let endpoint = listen;
    if (!path) {
      const a = server.address() as AddressInfo;
      endpoint = `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    }
    return new MetricsServer(metrics, server, endpoint);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
    this.metrics.close();
  }
}

/** A socket file left by a broker that died: removed. Anything else at the path is left and listen fails. */
function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // nothing there
  }
}
