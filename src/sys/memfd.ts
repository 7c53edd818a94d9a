// An anonymous shared-memory file (memfd) with optional seals.
//
// MemFd.fd is NOT the description memfd_create returned: that one is a
// pseudo file the kernel leaves out of both inotify and the F_SETLEASE open
// counts. create() re-opens it through /proc/self/fd/N and keeps the
// re-opened description, so that othersHaveOpen(memfd.fd) and an inotify
// watch on `/proc/self/fd/${memfd.fd.fd}` see every other description of the
// memory, including the one the owner hands out with reopen().
//
// Release observation, as measured on Linux 6.x: a description handed to
// another process is released when that process has both closed its fd and
// unmapped every mapping of it (a mapping holds the description), in either
// order. Only then does IN_CLOSE_WRITE (or _NOWRITE) fire and the lease probe
// turn false; not when only one of the two is done.
import { misuse } from '../errors.js';
import { Fd } from './fd.js';
import { Mapping } from './mapping.js';
import { native } from './native.js';

const { MFD_ALLOW_SEALING, O_RDWR, O_RDONLY } = native.constants as Record<string, number>;

export class MemFd {
  readonly fd: Fd;

  static create(name: string, opts: { size?: number; sealing?: boolean } = {}): MemFd {
    const raw = native.memfdCreate(name, opts.sealing ? MFD_ALLOW_SEALING! : 0);
    let reopened: number;
    try {
      reopened = native.open(`/proc/self/fd/${raw}`, O_RDWR!);
    } finally {
      native.close(raw);
    }
    const memfd = new MemFd(new Fd(reopened));
    try {
      if (opts.size) memfd.truncate(opts.size);
    } catch (err) {
      memfd.close();
      throw err;
    }
    return memfd;
  }

  /** Takes ownership of a memfd descriptor (e.g. one received over a socket). */
  constructor(fd: Fd) {
    this.fd = fd;
  }

  truncate(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `size must be a non-negative integer, got ${size}`);
    }
    native.ftruncate(this.fd.fd, size);
  }

  /**
   * Zero `length` bytes at `offset` by freeing them (fallocate PUNCH_HOLE): every mapping reads zeros there
   * from now on, and pages never touched stay untouched (no fault, no memory).
   */
  punchHole(offset: number, length: number): void {
    for (const [name, v] of [
      ['offset', offset],
      ['length', length],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw misuse('ERR_DEVLEASE_INVALID_ARG', `${name} must be a non-negative integer, got ${v}`);
      }
    }
    native.punchHole(this.fd.fd, offset, length);
  }

  /** F_ADD_SEALS (needs sealing: true at create()). */
  addSeals(seals: number): void {
    native.addSeals(this.fd.fd, seals);
  }

  get seals(): number {
    return native.getSeals(this.fd.fd);
  }

  stat(): { ino: bigint; dev: bigint; size: number } {
    const { ino, dev, size } = native.fstat(this.fd.fd);
    return { ino, dev, size };
  }

  /**
   * A NEW open file description of the same memory (open of /proc/self/fd/N),
   * to hand to another process: its release is observable on its own.
   */
  reopen(mode: 'r' | 'rw' = 'rw'): Fd {
    return new Fd(native.open(`/proc/self/fd/${this.fd.fd}`, mode === 'r' ? O_RDONLY! : O_RDWR!));
  }

  /** Maps the memfd (default: all of it, read-write, unguarded). */
  map(opts: { length?: number; offset?: number; prot?: 'r' | 'rw'; guard?: boolean } = {}): Mapping {
    // Object.assign, not a spread: on Node 20 (V8 11.3) a spread followed by a new property makes a new hidden class
    // nearly every call (docs/performance-history.md, issue 16, twenty-fourth pass §4).
    return Mapping.map(
      this.fd,
      Object.assign({}, opts, { length: opts.length ?? this.stat().size - (opts.offset ?? 0) }),
    );
  }

  get closed(): boolean {
    return this.fd.closed;
  }

  close(): void {
    this.fd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
