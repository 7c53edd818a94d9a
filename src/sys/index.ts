// src/sys: typed owners of the kernel handles devlease is built on. Every
// handle has one owner, an idempotent close() and [Symbol.dispose]; errors
// from syscalls carry `code`, `errno` and `syscall`.

export { closedError, isSysError, SysError } from '../errors.js';
export {
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  IN_CLOSE,
  IN_CLOSE_NOWRITE,
  IN_CLOSE_WRITE,
  IN_IGNORED,
  IN_OPEN,
  IN_Q_OVERFLOW,
  PAGE_SIZE,
  sysConstant,
  sysConstants,
} from './constants.js';
export { EventFd } from './eventfd.js';
export { Fd, fdNumber } from './fd.js';
export { type FutexWaitResult, futexWait, futexWake } from './futex.js';
export { Inotify, type InotifyEvent } from './inotify.js';
export { ioctl, othersHaveOpen, pread, pwrite } from './io.js';
export { type ListenSocket, listenFdsError, takeListenFds } from './listen-fds.js';
export { type MapOptions, Mapping } from './mapping.js';
export { MemFd } from './memfd.js';
export { MAX_FDS, native, type PeerCred } from './native.js';
export { PidFd } from './pidfd.js';
export { type SeqpacketMessage, SeqpacketSocket, type SeqpacketSocketOptions } from './seqpacket-socket.js';
export {
  type StreamFraming,
  type StreamMessage,
  StreamSocket,
  type StreamSocketOptions,
} from './stream-socket.js';
export {
  ACCEPT_BACKOFF_MS,
  type SeqpacketListenOptions,
  SeqpacketServer,
  type StreamListenOptions,
  StreamServer,
  type UnixListenOptions,
  UnixServer,
} from './unix-server.js';
