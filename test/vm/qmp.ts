// A small QMP client (QEMU's JSON machine protocol over a unix socket): one
// command at a time, each with a deadline; asynchronous events are kept in
// order so a test can tell whether the VM was stopped or reset.
import { createConnection, type Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

export class Qmp {
  readonly events: QmpEvent[] = [];
  #sock: Socket;
  #buf = '';
  #waiters: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  #closed: Error | null = null;

  private constructor(sock: Socket) {
    this.#sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.#onData(d));
    sock.on('error', (err) => this.#fail(err));
    sock.on('close', () => this.#fail(new Error('QMP connection closed')));
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const sock = createConnection(path);
    await withDeadline(
      new Promise<void>((res, rej) => {
        sock.once('connect', () => res());
        sock.once('error', rej);
      }),
      timeoutMs,
      `QMP connect to ${path}`,
    );
    const qmp = new Qmp(sock);
    await withDeadline(qmp.#next(), timeoutMs, 'QMP greeting');
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  /** Runs one command; resolves with its `return`, rejects with its `error`. */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    if (this.#closed) throw this.#closed;
    const reply = this.#next();
    this.#sock.write(
      `${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`,
    );
    const r = (await withDeadline(reply, timeoutMs, `QMP ${command}`)) as {
      return?: unknown;
      error?: { class: string; desc: string };
    };
    if (r.error) throw new Error(`QMP ${command}: ${r.error.class}: ${r.error.desc}`);
    return r.return;
  }

  async status(): Promise<string> {
    return ((await this.execute('query-status')) as { status: string }).status;
  }

  close(): void {
    this.#sock.destroy();
  }

  #next(): Promise<unknown> {
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #onData(d: string): void {
    this.#buf += d;
    for (let nl = this.#buf.indexOf('\n'); nl >= 0; nl = this.#buf.indexOf('\n')) {
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if (typeof msg.event === 'string') this.events.push(msg as unknown as QmpEvent);
      else this.#waiters.shift()?.resolve(msg);
    }
  }

  #fail(err: Error): void {
    this.#closed ??= err;
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }
}

export async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
