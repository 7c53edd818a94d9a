// Running the real command line as a child process, for the tests of what it says about bad input: its exit
// code, its stdout and stderr whole, and whether it exited at all (a hang is a result, not a stuck test).
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { DEVLEASE_BIN } from '../../src/util/processes.js';

export interface CliResult {
  /** The exit code; null when it was killed (after `timeoutMs`: `hung` is then true). */
  code: number | null;
  stdout: string;
  stderr: string;
  hung: boolean;
}

export interface CliOptions {
  /** Run as this uid and gid (the test must be root to ask). */
  user?: { uid: number; gid: number };
  /** Arguments to node itself, before bin/devlease.js. */
  nodeArgs?: string[];
  /** Killed (SIGKILL) after this long: how long a failing command may take to say why, with room for load. */
  timeoutMs?: number;
}

/** `devlease ARGS` started, its output collected as it comes; `closed` resolves with its exit code once both pipes ended. */
export function spawnCli(args: string[], opts: Pick<CliOptions, 'user' | 'nodeArgs'> = {}) {
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), DEVLEASE_BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.user ?? {}),
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d;
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d;
  });
  // 'close': exited and both pipes read to their end.
  const closed = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  return { child, closed, out: () => stdout, err: () => stderr };
}

export async function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const run = spawnCli(args, opts);
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    run.child.kill('SIGKILL');
  }, opts.timeoutMs ?? 60_000);
  const code = await run.closed;
  clearTimeout(timer);
  return { code, stdout: run.out(), stderr: run.err(), hung };
}

/** The command failed with `code` and said so in one line matching `message`, without a stack trace. */
export function assertFailed(r: CliResult, code: number, message: RegExp): void {
  const said = `exit ${r.code}${r.hung ? ' (killed: it did not exit)' : ''}\nstderr: ${r.stderr}\nstdout: ${r.stdout}`;
  assert.equal(r.hung, false, `it exited: ${said}`);
  assert.equal(r.code, code, said);
  assert.match(r.stderr, message, said);
  assert.doesNotMatch(r.stderr, /^\s+at .+:\d+:\d+\)?$/m, `no stack trace: ${said}`);
}

/** `devlease sim` as a child (as `user` when given), ready to serve on `socket`. */
export async function startSim(
  socket: string,
  user?: { uid: number; gid: number },
): Promise<{ child: ChildProcess; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [DEVLEASE_BIN, 'sim', '--socket', socket, '--queues', '4'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    ...(user ?? {}),
  });
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  const ready = await new Promise<boolean>((resolve) => {
    createInterface({ input: child.stdout! }).on('line', (l) => {
      if (l.startsWith('ready ')) resolve(true);
    });
    child.once('exit', () => resolve(false));
  });
  assert.ok(ready, 'devlease sim started');
  return {
    child,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await closed;
    },
  };
}
