// The chaos suite's victims, of two kinds doing the same phases: Node
// processes on the TypeScript client library (chaos-client.ts, reporting over
// IPC; ~0.35 CPU-s of start-up each) and C processes on libdevlease
// (clients/c/tests/chaos-victim.c, reporting lines on stdout; <10 ms of CPU each), so
// that a run of 10,000 kills is affordable while both client libraries are
// still killed at every point. Either way the runner sees the same marks:
// 'start' before connecting, 'working' with the lease id, 'error' with a code.
import { type ChildProcess, fork, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildClib } from '../clib/build.js';

export type VictimKind = 'node' | 'c';

export interface Mark {
  m: string;
  lease?: string;
  code?: string;
  /** An 'error' mark's message. */
  message?: string;
}

const NODE_CLIENT = join(dirname(fileURLToPath(import.meta.url)), 'chaos-client.js');

/** The C victim's path (built by make, as test/clib does; throws naming a missing compiler or json-c). */
export function cVictim(): string {
  return join(buildClib(), 'chaos-victim');
}

/** Starts one victim; `onMark` gets its marks in order, `stderr` what it wrote there (the first 4000 chars). */
export function spawnVictim(
  kind: VictimKind,
  args: { socket: string; phase: string; seed: number; comply: boolean },
  onMark: (mark: Mark) => void,
): { child: ChildProcess; stderr: () => string } {
  const argv = [args.socket, args.phase, String(args.seed), args.comply ? 'comply' : ''];
  let child: ChildProcess;
  if (kind === 'node') {
    child = fork(NODE_CLIENT, argv, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    child.on('message', (msg: Mark) => onMark(msg));
  } else {
    child = spawn(cVictim(), argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const [m = '', a, ...rest] = buf.slice(0, nl).split(' ');
        buf = buf.slice(nl + 1);
        if (m === 'working') onMark({ m, lease: a ?? '' });
        else if (m === 'error') onMark({ m, code: a ?? 'none', message: rest.join(' ') });
        else if (m) onMark({ m });
      }
    });
  }
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 4000) stderr += d.toString();
  });
  return { child, stderr: () => stderr };
}
