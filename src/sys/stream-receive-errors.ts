// The errors of a stream read whose fds did not all come (stream-reader.ts), by recvIntoFds[1] (RECV_CUT):
// those that are the reader's side's own state, worded for whoever receives them. Each is read when it
// happens, for that message only: the counts may move right after.
import { DevleaseError } from '../errors.js';
import { native, RECV_CUT } from './native.js';

/**
 * TABLE_FULL or REFUSED: the message's fds could not be installed in this process. The message is whole; the
 * failure is this process's, so the text names it (pid, its RLIMIT_NOFILE) for the peer's logs as for ours.
 */
export function fdsLostError(cut: number): DevleaseError {
  const who = `the receiving process (pid ${process.pid})`;
  if (cut !== RECV_CUT.TABLE_FULL)
    return new DevleaseError(
      'EACCES',
      `the message's fds could not be received: a security module refused them to ${who}`,
    );
  const limit = native.nofileLimit();
  return new DevleaseError(
    'EMFILE',
    `the message's fds could not be received: the fd table of ${who} is full (RLIMIT_NOFILE ${limit < 0 ? 'unlimited' : limit})`,
  );
}

/**
 * BACKLOGGED: an untrusted peer's fds were dropped unopened because the peer's uid (`peerUid`, -1: not known)
 * has its share of the closer thread's queue (native/close.cc), or the queue is full.
 */
export function backlogError(peerUid: number): DevleaseError {
  const limit = native.closesQueueLimitPerUid;
  const mine = peerUid >= 0 && native.closesQueuedFrom(peerUid) >= limit;
  const what = mine ? `${limit} fds of uid ${peerUid}'s clients` : `${native.closesQueueLimit} received fds`;
  return new DevleaseError(
    'EMFILE',
    `a message carried fds while ${what} wait to be closed behind a close that does not return (a file system not answering FLUSH): no fds are taken from ${mine ? 'that uid' : 'clients'} until they are closed`,
  );
}
