// A child the command line starts for the user (the demo's simulator, broker and clients; a bench case and
// what it starts) ends when the process that started it dies, even by SIGKILL, which gives that parent no
// chance to stop it: such a child was left running (the simulator spinning) with nobody to stop it.
//
// The parent names itself in the child's environment (childEnv); the child opens a pidfd on that pid and
// watches it with the event loop. Opening by pid races the parent's death (the pid may by then be free, or
// another process's), so after opening, the child checks that getppid() is still that pid: a child whose
// parent died was re-parented (to init or a subreaper), so a match means the pidfd is its parent's.

import { PidFd } from '../sys/pidfd.js';

/** The variable naming the pid to outlive: set by childEnv() in the parent, read and removed by the child. */
export const PARENT_PID_ENV = 'DEVLEASE_EXIT_WITH_PARENT';

/** The environment for a child that is to end with this process. */
export function childEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...env, [PARENT_PID_ENV]: String(process.pid) };
}

let watching: PidFd | null = null;

/** How long the SIGTERM this process sends itself at its parent's death may take before it SIGKILLs itself. */
const STOP_GRACE_MS = 10_000;

/**
 * When this process was started by childEnv(): once its parent is gone, it sends itself SIGTERM, so it stops
 * the way it does on `kill` (the simulator and the broker unlink their sockets; see docs/OPERATIONS.md). The
 * variable is removed from process.env so this process's own children (the daemon's successor in an upgrade)
 * do not inherit a parent that is not theirs. The watch does not keep the event loop alive. Idempotent.
 */
export function exitWithParent(): void {
  const named = process.env[PARENT_PID_ENV];
  if (named === undefined || watching !== null) return;
  delete process.env[PARENT_PID_ENV];
  const pid = Number(named);
  if (!/^[1-9]\d*$/.test(named) || !Number.isSafeInteger(pid)) return;
  // The parent's death breaks the pipes it read this process's output from, before its pidfd says so: the next
  // write (a broker's log line of the simulator it lost) failed EPIPE as an unhandled 'error' and ended this
  // process at once, its sockets left behind. Output nobody reads any more is dropped instead.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') throw err;
    });
  }
  const stop = () => {
    // A stop that does not finish (a broker waiting on a device that stopped answering) must not leave this
    // process behind either: the demo's own stop escalates to SIGKILL after 5 s (processes.ts), this after 10.
    setTimeout(() => process.kill(process.pid, 'SIGKILL'), STOP_GRACE_MS).unref();
    process.kill(process.pid, 'SIGTERM');
  };
  let pidfd: PidFd;
  try {
    pidfd = PidFd.open(pid);
  } catch {
    // ESRCH: already gone (and reaped). Whatever else: the check below cannot be trusted either way, and a
    // child that cannot watch its parent should not outlive it unnoticed.
    stop();
    return;
  }
  if (process.ppid !== pid) {
    // The parent died before the pidfd was opened; `pid` may now be another process's.
    pidfd.close();
    stop();
    return;
  }
  watching = pidfd;
  pidfd.unref();
  pidfd.onExit(() => {
    pidfd.close();
    stop();
  });
}
