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
 * SO_PEERPIDFD: a pidfd of the peer process, race-free. On kernels before
 * 6.5 (ENOPROTOOPT) falls back to pidfd_open(peerCred().pid), which can
 * name the wrong process if the peer died and its pid was reused in between.
 */
export function peerPidfdOf(fd: number): PidFd {
  try {
    return PidFd.adopt(new Fd(native.peerPidfd(fd)));
  } catch (err) {
    if (!isSysError(err, 'ENOPROTOOPT')) throw err;
    return PidFd.open(native.peerCred(fd).pid);
  }
}
