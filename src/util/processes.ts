// Child processes in the real deployment shape, for the demo, the tests and
// the benchmarks: the simulator, the broker daemon and client workers, each
// a `node` process whose stdout carries JSON lines. (Not under src/demo:
// tests may not import the demo.)

import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { childEnv } from './exit-with-parent.js';

const here = dirname(fileURLToPath(import.meta.url));
/** bin/devlease.js, from dist/src/util/. */
export const DEVLEASE_BIN = join(here, '..', '..', '..', 'bin', 'devlease.js');

export interface Child {
  proc: ChildProcess;
  pid: number;
  /** Resolves with the exit code (or 128+signal). */
  exited: Promise<number>;
  stop(signal?: NodeJS.Signals): Promise<number>;
}

export function spawnNode(
  script: string,
  args: string[],
  onLine: (line: string) => void,
  onErr: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Child {
  // childEnv: the child ends with this process, even if this one is SIGKILLed (src/util/exit-with-parent.ts).
  const proc = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: childEnv(),
  });
  createInterface({ input: proc.stdout! }).on('line', onLine);
  createInterface({ input: proc.stderr! }).on('line', onErr);
  const exited = new Promise<number>((resolve) => {
    proc.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? signalNumber(sig) : 0)));
  });
  return {
    proc,
    pid: proc.pid ?? -1,
    exited,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

function signalNumber(sig: NodeJS.Signals): number {
  return ({ SIGINT: 2, SIGKILL: 9, SIGTERM: 15, SIGBUS: 7, SIGSEGV: 11 } as Record<string, number>)[sig] ?? 0;
}

export async function waitFor(what: string, pred: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Wait for `ready`; a child that exits first, or is not ready in time, fails the start (and is killed). */
async function readyOrKill(child: Child, ready: Promise<void>, name: string): Promise<void> {
  try {
    await Promise.race([
      ready,
      child.exited.then((c) => {
        throw new Error(`${name} exited with ${c} before it was ready`);
      }),
    ]);
  } catch (err) {
    await child.stop('SIGKILL');
    throw err;
  }
}

/** Start `devlease sim` and wait for its "ready" line (printed once it is listening). */
export async function startSim(
  socket: string,
  args: string[] = [],
  log: (l: string) => void = () => {},
): Promise<Child> {
  let ready = false;
  const child = spawnNode(
    DEVLEASE_BIN,
    ['sim', '--socket', socket, ...args],
    (line) => {
      if (line.startsWith('ready ')) ready = true;
      log(line);
    },
    log,
  );
  await readyOrKill(
    child,
    waitFor(`the simulator on ${socket}`, () => ready),
    'devlease sim',
  );
  return child;
}

/** Start `devlease daemon` and wait for its ready line; audit lines go to `onEvent`. */
export async function startBroker(
  device: string,
  args: string[],
  onEvent: (ev: Record<string, unknown>) => void,
): Promise<Child & { sockets: Record<string, string>; dir: string }> {
  let ready: { sockets: Record<string, string>; dir: string } | null = null;
  const child = spawnNode(DEVLEASE_BIN, ['daemon', '--device', device, ...args], (line) => {
    let ev: Record<string, unknown>;
    try {
      ev = JSON.parse(line);
    } catch {
      return;
    }
    if (ev.event === 'ready') ready = ev as unknown as typeof ready;
    onEvent(ev);
  });
  await readyOrKill(
    child,
    waitFor('the broker to be ready', () => ready !== null),
    'devlease daemon',
  );
  return Object.assign(child, ready!);
}
