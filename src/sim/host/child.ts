// Run the simulator as a child process (`devlease sim --control-stdin`), the
// way the broker's tests and the demo use it: wait for its ready line, send
// fault injections as JSON lines on its stdin, stop it with SIGTERM.

import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Sa1Options } from '../model/options.js';
import type { DeviceStats, InjectRequest } from './commands.js';
import { bigintReplacer } from './control-json.js';

export interface ChildSimulator {
  readonly pid: number;
  readonly socketPath: string;
  readonly process: ChildProcess;
  inject(req: InjectRequest): Promise<void>;
  stats(): Promise<DeviceStats>;
  /** The simulator's view of its owner: as SimulatorHandle.owner() says it. */
  owner(): Promise<{ owner: { id: number; pid: number } | null; waiting: number; connections: number }>;
  /** Resolves when the child has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM and wait (the child removes its socket). Idempotent. */
  close(): Promise<void>;
}

const BIN = new URL('../../../../bin/devlease.js', import.meta.url);

const FLAGS: Record<keyof Sa1Options, (v: number) => string[]> = {
  numQueues: (v) => ['--queues', String(v)],
  queueStride: (v) => ['--stride', String(v)],
  devmemSize: (v) => ['--devmem', String(v / 1048576)],
  devmemGranule: (v) => ['--granule', String(v)],
  idlePollUs: (v) => ['--idle-poll-us', String(v)],
  armedPollUs: (v) => ['--armed-poll-us', String(v)],
};

export async function spawnSimulator(
  opts: Partial<Sa1Options> & { socketPath: string; readyTimeoutMs?: number; maxDmaMaps?: number },
): Promise<ChildSimulator> {
  const args = [BIN.pathname, 'sim', '--socket', opts.socketPath, '--control-stdin'];
  for (const [k, flag] of Object.entries(FLAGS)) {
    const v = opts[k as keyof Sa1Options];
    if (v !== undefined) args.push(...flag(v));
  }
  if (opts.maxDmaMaps !== undefined) args.push('--max-dma-maps', String(opts.maxDmaMaps));
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  // 'close' comes after 'exit', once the child's stdio pipes are closed too: close() waits for it, so a
  // caller counting its fds right after finds none of them left.
  const stdioClosed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const lines = createInterface({ input: child.stdout! });
  const waiting: ((line: string) => void)[] = [];
  const nextLine = (): Promise<string> => new Promise((resolve) => waiting.push(resolve));
  lines.on('line', (l) => waiting.shift()?.(l));

  // A start takes ~0.5 s idle but 5-6 s on a 2-core machine at load 13 (measured): the default leaves room.
  const readyMs = opts.readyTimeoutMs ?? 30_000;
  const ready = await Promise.race([
    nextLine(),
    exited.then(({ code, signal }) => {
      throw new Error(`devlease sim exited (${code ?? signal}) before ready: ${stderr.trim()}`);
    }),
    new Promise<never>((_, reject) =>
      setTimeout(
        () =>
          reject(
            Object.assign(
              new Error(
                `devlease sim not ready: no "ready" line within ${readyMs} ms (pid ${child.pid})${stderr.trim() ? `; stderr: ${stderr.trim()}` : ', nothing on stderr'}`,
              ),
              { code: 'ETIMEDOUT' },
            ),
          ),
        readyMs,
      ).unref(),
    ),
  ]).catch(async (err) => {
    child.kill('SIGKILL');
    await exited; // reaped, its pipes closing: a caller that counts fds after the error finds none left
    child.stdin?.destroy();
    await stdioClosed;
    throw err;
  });
  if (!ready.startsWith('ready ')) throw new Error(`unexpected first line from devlease sim: ${ready}`);

  // Control requests are answered in order, one line each.
  let chain: Promise<unknown> = Promise.resolve();
  const send = <T>(req: unknown): Promise<T> => {
    const p = chain.then(async () => {
      const answer = nextLine();
      child.stdin!.write(`${JSON.stringify(req, bigintReplacer)}\n`);
      const r = JSON.parse(await answer) as { ok: boolean; error?: string } & T;
      if (!r.ok) throw new Error(`devlease sim refused ${JSON.stringify(req, bigintReplacer)}: ${r.error}`);
      return r;
    });
    chain = p.catch(() => {});
    return p;
  };
  let closing: Promise<void> | null = null;
  return {
    pid: child.pid as number,
    socketPath: opts.socketPath,
    process: child,
    exited,
    inject: async (req) => {
      await send(req);
    },
    stats: async () => (await send<{ stats: DeviceStats }>({ kind: 'stats' })).stats,
    owner: async () => {
      const r = await send<{
        owner: { id: number; pid: number } | null;
        waiting: number;
        connections: number;
      }>({
        kind: 'owner',
      });
      return { owner: r.owner, waiting: r.waiting, connections: r.connections };
    },
    close() {
      closing ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        await exited;
        child.stdin?.destroy();
        await stdioClosed;
        lines.close();
      })();
      return closing;
    },
  };
}
