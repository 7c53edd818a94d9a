// The syscalls the kernel backend issues, behind one small interface so the
// host tests can record them (test/device-kernel): every device node open,
// ioctl, region pread/pwrite and mmap goes through a KernelSys. `realSys` is
// the one that talks to the kernel.
//
// ioctl errors are rethrown naming the request (VFIO and iommufd numbers
// overlap, so the name is passed in) and the file, keeping `code`, `errno`
// and `syscall` from the addon.

import { Fd } from '../../sys/fd.js';
import { Mapping } from '../../sys/mapping.js';
import { MemFd } from '../../sys/memfd.js';
import { native } from '../../sys/native.js';

/** Memory the backend reads or writes, or hands to the kernel by address. */
export interface UserMemory {
  readonly address: bigint;
  readonly length: number;
  readonly u8: Uint8Array;
  unmap(): void;
}

export interface KernelSys {
  /** open(2) read-write, close-on-exec. */
  open(path: string): Fd;
  /** ioctl(2) with an integer argument or an in/out buffer; returns the ioctl's value. */
  ioctl(fd: Fd, request: number, arg: number | Uint8Array): number;
  pread(fd: Fd, buf: Uint8Array, offset: bigint): number;
  pwrite(fd: Fd, buf: Uint8Array, offset: bigint): number;
  /** A shared mapping of `fd` at `offset`. */
  mmap(fd: Fd, length: number, offset: bigint, prot: 'r' | 'rw'): UserMemory;
  /** Zeroed private scratch memory the kernel may write into through a pointer in an ioctl argument. */
  scratch(length: number): UserMemory;
}

const { O_RDWR } = native.constants as Record<string, number>;

export const realSys: KernelSys = {
  open: (path) => new Fd(native.open(path, O_RDWR!)),
  ioctl: (fd, request, arg) => native.ioctl(fd.fd, request, arg),
  pread: (fd, buf, offset) => native.pread(fd.fd, buf, offset),
  pwrite: (fd, buf, offset) => native.pwrite(fd.fd, buf, offset),
  mmap: (fd, length, offset, prot) => Mapping.map(fd, { length, offset: Number(offset), prot }),
  scratch: (length) => {
    // A memfd page rather than a JS buffer: the addon gives no buffer addresses, a mapping has one.
    using mem = MemFd.create('devlease-ioctl-scratch', { size: length });
    return mem.map();
  },
};

export interface NamedErrorFields {
  code?: string;
  errno?: number;
  syscall?: string;
}

/** Rethrow a syscall failure as `${what}: ${code}` with the original code/errno/syscall kept. */
export function explain(err: unknown, what: string, hint?: string): Error {
  const e = err as Error & NamedErrorFields;
  const code = e.code ?? 'EIO';
  const out = new Error(`${what}: ${code}${hint ? ` (${hint})` : ''}`, { cause: err });
  return Object.assign(out, { code, errno: e.errno, syscall: e.syscall ?? 'ioctl' });
}

/** An ioctl whose failure names the request and the file. */
export function ioctlNamed(
  sys: KernelSys,
  fd: Fd,
  name: string,
  file: string,
  request: number,
  arg: number | Uint8Array,
): number {
  try {
    return sys.ioctl(fd, request, arg);
  } catch (err) {
    throw explain(err, `${name} on ${file}`);
  }
}

/** An error with a code and no syscall behind it (refusals the backend makes itself). */
export function codedError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}
