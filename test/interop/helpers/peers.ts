// Stock vfio-user peers for the interop suite: libvfio-user's samples (built
// by scripts/peers/libvfio-user.sh, found through DEVLEASE_LIBVFIO_USER_SAMPLES),
// `devlease daemon` and `devlease sim` as child processes. A `Peers` owns every
// process it starts and kills them all in `close()`, so a failing test leaves
// nothing running.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEVLEASE_BIN } from '../../../src/util/processes.js';

export const SAMPLES_ENV = 'DEVLEASE_LIBVFIO_USER_SAMPLES';
export type SampleName = 'gpio-pci-idio-16' | 'server' | 'client';

/** Path of a built libvfio-user sample; throws naming what is missing (never skips). */
export function samplePath(name: SampleName): string {
  const dir = process.env[SAMPLES_ENV];
  if (!dir) {
    throw new Error(
      `${SAMPLES_ENV} is not set: it must name libvfio-user's built samples folder. ` +
        `Run the suite with 'npm run test:interop', which builds them (scripts/peers/libvfio-user.sh, ` +
        `tarball from DEVLEASE_LIBVFIO_USER_TARBALL) and sets it.`,
    );
  }
  const bin = join(dir, name);
  if (!existsSync(bin))
    throw new Error(`${SAMPLES_ENV}=${dir} holds no '${name}' sample (looked for ${bin})`);
  return bin;
}

const LISTENING = '00010000'; // /proc/net/unix Flags of a listening socket (__SO_ACCEPTCON)
const SOCK_STREAM = '0001';
const SOCK_SEQPACKET = '0005';

/** The type of the listening AF_UNIX socket bound at `path` ('stream', 'seqpacket', other), or null. */
export function listeningSocketType(path: string): 'stream' | 'seqpacket' | string | null {
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[7] !== path || f[3] !== LISTENING) continue;
    return f[4] === SOCK_STREAM ? 'stream' : f[4] === SOCK_SEQPACKET ? 'seqpacket' : `type ${f[4]}`;
  }
  return null;
}

/** Poll `pred` every 10 ms until true; throws naming `what` after `timeoutMs`. */
export async function until(
  what: string,
  pred: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface Proc {
  readonly name: string;
  readonly proc: ChildProcess;
  /** stdout and stderr so far (the last 64 KiB of each). */
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited and its pipes are closed. */
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly running: boolean;
  /** Send `signal` and wait for the exit (SIGKILL after 5 s). */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface Daemon extends Proc {
  /** Lease socket of each kind (the generic driver: `device`). */
  sockets: Record<string, string>;
  /** Audit events from its stdout, in order. */
  events: Record<string, unknown>[];
}

const KEEP = 65536;

export class Peers {
  readonly dir = mkdtempSync(join(tmpdir(), 'devlease-interop-'));
  readonly #procs = new Set<Proc>();

  #spawn(name: string, file: string, args: string[]): Proc {
    const proc = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out = (out + d.toString()).slice(-KEEP);
    });
    proc.stderr!.on('data', (d: Buffer) => {
      err = (err + d.toString()).slice(-KEEP);
    });
    const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      proc.once('close', (code, signal) => resolve({ code, signal }));
      proc.once('error', () => resolve({ code: null, signal: null }));
    });
    const p: Proc = {
      name,
      proc,
      stdout: () => out,
      stderr: () => err,
      closed,
      get running() {
        return proc.exitCode === null && proc.signalCode === null;
      },
      async stop(signal = 'SIGTERM') {
        if (p.running) proc.kill(signal);
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
        const r = await closed;
        clearTimeout(timer);
        return r;
      },
    };
    this.#procs.add(p);
    void closed.then(() => this.#procs.delete(p));
    return p;
  }

  /** Start a libvfio-user sample on `socket` and wait until it listens (it serves one client at a time). */
  async sample(name: Exclude<SampleName, 'client'>, socket: string): Promise<Proc> {
    const p = this.#spawn(name, samplePath(name), ['-v', socket]);
    try {
      await until(
        `libvfio-user's ${name} to listen on ${socket}`,
        () => {
          if (!p.running) throw new Error(`${name} exited before listening: ${p.stderr().trim()}`);
          return listeningSocketType(socket) !== null;
        },
        10_000,
      );
    } catch (err) {
      await p.stop('SIGKILL');
      throw err;
    }
    return p;
  }

  /** Run libvfio-user's `client` sample against `socket` to its end (it exits by itself). */
  async runClient(
    socket: string,
    timeoutMs = 20_000,
  ): Promise<Proc & { result: { code: number | null; signal: NodeJS.Signals | null } }> {
    const p = this.#spawn('client', samplePath('client'), [socket]);
    const timer = setTimeout(() => p.proc.kill('SIGKILL'), timeoutMs);
    const result = await p.closed;
    clearTimeout(timer);
    return Object.assign(p, { result });
  }

  /** `devlease sim --socket PATH`, ready once it prints its ready line. */
  async sim(socket: string, args: string[] = []): Promise<Proc> {
    const p = this.#spawn('devlease sim', process.execPath, [
      DEVLEASE_BIN,
      'sim',
      '--socket',
      socket,
      ...args,
    ]);
    await this.#ready(p, () => p.stdout().includes('ready '));
    return p;
  }

  /** `devlease daemon --device vfio-user:SOCKET [args]`, ready once it prints its ready line. */
  async daemon(deviceSocket: string, rundir = join(this.dir, 'run'), args: string[] = []): Promise<Daemon> {
    const p = this.#spawn('devlease daemon', process.execPath, [
      DEVLEASE_BIN,
      'daemon',
      '--device',
      `vfio-user:${deviceSocket}`,
      '--rundir',
      rundir,
      ...args,
    ]);
    const events: Record<string, unknown>[] = [];
    let sockets: Record<string, string> | null = null;
    let partial = '';
    p.proc.stdout!.on('data', (d: Buffer) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        try {
          const ev = JSON.parse(line) as Record<string, unknown>;
          if (ev.event === 'ready') sockets = ev.sockets as Record<string, string>;
          events.push(ev);
        } catch {
          // not an audit line
        }
      }
    });
    await this.#ready(p, () => sockets !== null);
    return Object.assign(p, { sockets: sockets!, events });
  }

  async #ready(p: Proc, isReady: () => boolean): Promise<void> {
    try {
      await until(`${p.name} to be ready`, () => {
        if (isReady()) return true;
        if (!p.running) throw new Error(`${p.name} exited before it was ready: ${p.stderr().trim()}`);
        return false;
      });
    } catch (err) {
      await p.stop('SIGKILL');
      throw err;
    }
  }

  /** Every process still running, for a failure message. */
  describe(): string {
    return [...this.#procs]
      .map((p) => `${p.name} (pid ${p.proc.pid}): ${p.stderr().slice(-2000)}`)
      .join('\n');
  }

  /** Stop every process started here (daemons first, gently; then the rest), and remove the folder. */
  async close(): Promise<void> {
    const procs = [...this.#procs];
    await Promise.all(procs.filter((p) => p.name === 'devlease daemon').map((p) => p.stop('SIGTERM')));
    await Promise.all(procs.map((p) => p.stop('SIGKILL')));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
