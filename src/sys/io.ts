// Plain syscalls on any descriptor, accepting an owned Fd or a number.
import { type Fd, fdNumber } from './fd.js';
import { native } from './native.js';

/** ioctl(2) with an integer argument or an in/out buffer; returns the ioctl's return value. */
export function ioctl(fd: Fd | number, request: number, arg: number | bigint | Uint8Array): number {
  return native.ioctl(fdNumber(fd), request, arg);
}

export function pread(fd: Fd | number, buf: Uint8Array, offset: number | bigint): number {
  return native.pread(fdNumber(fd), buf, offset);
}

export function pwrite(fd: Fd | number, buf: Uint8Array, offset: number | bigint): number {
  return native.pwrite(fdNumber(fd), buf, offset);
}

/**
 * The F_SETLEASE probe: true while any *other* open file description of the
 * file exists -- in this or another process, held by an fd, by an mmap, or by
 * an SCM_RIGHTS message in flight. Pass a description that came from open(2)
 * (MemFd.fd is one); it needs ownership of the file or CAP_LEASE.
 *
 * Caveat: the write lease exists for the microseconds between taking and
 * dropping it; an open() racing into that window by another process would
 * break it and send this process SIGIO.
 */
export function othersHaveOpen(fd: Fd | number): boolean {
  return native.leaseProbe(fdNumber(fd));
}
