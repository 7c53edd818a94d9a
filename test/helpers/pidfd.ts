// Signalling a process a test did not start itself (a broker an upgrade started, a pid read from an answer)
// through a pidfd instead of its pid: once the process is reaped its pid can be given to another process (another
// test's, a CI runner's), which a process.kill(pid) would then hit. A pidfd opened while the process is known to
// be alive names that process for good. (A child this test spawned is signalled through its ChildProcess handle,
// which Node drops at the child's exit, before the pid can be reused.)
import { isSysError } from '../../src/errors.js';
import { PidFd } from '../../src/sys/pidfd.js';

/** A pidfd of `pid`, which must be alive now (e.g. it just printed its ready line). */
export function pidfdOf(pid: number, what = `process ${pid}`): PidFd {
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`pidfdOf: ${what} has no pid (${pid})`);
  try {
    return PidFd.open(pid);
  } catch (err) {
    if (isSysError(err, 'ESRCH')) throw new Error(`pidfdOf: ${what} (pid ${pid}) is already gone`);
    throw err;
  }
}

/**
 * A pidfd of the process `ask` names (a broker's pid from its status answer), confirmed after the open: `ask`
 * naming the same pid again means the pidfd is that process, since no two live processes share a pid. Without
 * the second ask, a process that exited between the answer and the open could have had its pid given away.
 */
export async function confirmedPidfd(ask: () => Promise<number>, what = 'the process'): Promise<PidFd> {
  const pid = await ask();
  const fd = pidfdOf(pid, what);
  try {
    const again = await ask();
    if (again !== pid) throw new Error(`confirmedPidfd: ${what} was pid ${pid}, now ${again}`);
    return fd;
  } catch (err) {
    fd.close();
    throw err;
  }
}

/** Sends `sig` through `pidfd`; false (nothing sent) if the process has already been reaped. */
export function signal(pidfd: PidFd, sig: NodeJS.Signals): boolean {
  try {
    pidfd.sendSignal(sig);
    return true;
  } catch (err) {
    if (isSysError(err, 'ESRCH')) return false;
    throw err;
  }
}
