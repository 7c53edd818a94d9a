// Peer identity of a connected AF_UNIX socket (either type).
import { isSysError } from '../errors.js';
import { Fd } from './fd.js';
import { native, type PeerCred } from './native.js';
import { PidFd } from './pidfd.js';

/** SO_PEERCRED: the peer's pid/uid/gid at connect() time. */
export function peerCredOf(fd: number): PeerCred {
  return native.peerCred(fd);
}

/**
 * SO_PEERGROUPS: the peer's supplementary groups at connect() time, kept with the socket as SO_PEERCRED's ids
 * are. Not /proc/<pid>/status read now: the peer may have exited since (its socket passed on) and its pid been
 * given to another process, whose groups those would be.
 */
export function peerGroupsOf(fd: number): number[] {
  return native.peerGroups(fd);
}

/**
 * SO_PEERCRED's uid, or null if the socket has none to give (not a connected AF_UNIX socket: a bug of the
 * caller's, whose fds are then counted as from nobody known rather than failing the connection).
 */
export function peerUidOf(fd: number): number | null {
  try {
    return native.peerCred(fd).uid;
  } catch {
    return null;
  }
}

/**
 * SO_PEERPIDFD: a pidfd of the peer process, race-free. On kernels before
 * 6.5 (ENOPROTOOPT) falls back to pidfd_open(peerCred().pid), which can
 * name the wrong process if the peer died and its pid was reused in between.
 *
 * Its pid is SO_PEERCRED's: the kernel keeps one peer pid per socket and
 * gives both options from it, so PidFd.adopt's read of /proc/self/fdinfo
 * (an open, two reads and a close, on every accepted connection) would only
 * say the same — or -1 once the process has exited, which the pidfd itself
 * reports (onExit) and nothing reads `pid` for.
 *
 * `credPid`: that pid when the caller has read SO_PEERCRED already (an
 * accepted connection's cred), so it is not asked twice; undefined or ≤ 0
 * (the caller's read failed) reads it here.
 */
export function peerPidfdOf(fd: number, credPid?: number): PidFd {
  const pidOf = (): number => (credPid !== undefined && credPid > 0 ? credPid : native.peerCred(fd).pid);
  try {
    const pidfd = new Fd(native.peerPidfd(fd));
    let pid: number;
    try {
      pid = pidOf();
    } catch (err) {
      pidfd.close();
      throw err;
    }
    return new PidFd(pidfd, pid);
  } catch (err) {
    if (!isSysError(err, 'ENOPROTOOPT')) throw err;
    return PidFd.open(pidOf());
  }
}
