// The native addon's raw surface (native/*.cc), loaded once. Only syscalls
// Node lacks live there; everything above this file is TypeScript.
//
// Conventions of the raw surface:
// - fds are plain numbers; ownership is taken by the classes in src/sys/.
// - every failing syscall throws a SysError (src/errors.ts) with `code`
//   ('EAGAIN', ...), `errno` (positive number) and `syscall` (e.g. 'sendmsg');
// - misuse (wrong argument types, a closed handle, too many fds) throws a
//   MisuseError before any syscall, with code 'ERR_DEVLEASE_INVALID_ARG' or
//   'ERR_DEVLEASE_CLOSED' or 'ERR_DEVLEASE_TOO_MANY_FDS'.
// The addon constructs those classes itself (setErrorClasses, below, once per
// thread), so there is one error model on both sides of the addon.

import { MisuseError, SysError } from '../errors.js';
import { withFailNth } from './fail-nth.js';

if (process.platform !== 'linux') {
  throw new Error(
    `devlease runs on Linux only (it needs AF_UNIX SCM_RIGHTS, pidfd, memfd and VFIO); this is ${process.platform}`,
  );
}

/** recvIntoFds[1]: why the last recvInto's control data was cut (MSG_CTRUNC), native/unix_socket.cc RecvCut. */
export const RECV_CUT = {
  NONE: 0,
  /** More fds than maxFds: the first maxFds came, the rest were closed. */
  TOO_MANY: 1,
  /** An untrusted peer's fds were dropped unopened: the closer thread's queue, or the peer's uid's share, is full. */
  BACKLOGGED: 2,
  /**
   * The message's fds could not be installed (fewer than maxFds came, though there was room): this process's fd
   * table is full (EMFILE). The message's bytes were read; the fds that did come are closed ([0] is 0).
   */
  TABLE_FULL: 3,
  /** As TABLE_FULL, the table not full: a security module refused them (security_file_receive). */
  REFUSED: 4,
} as const;

/** Maximum number of fds one message may carry (SCM_RIGHTS). */
export const MAX_FDS = 253; // SCM_MAX_FD, the kernel's own limit (native kMaxFds)

export interface RecvResult {
  /** The message bytes (at most the receive buffer size). */
  data: Buffer;
  /** fds received, already close-on-exec. */
  fds: number[];
  /** MSG_TRUNC: the message was longer than the buffer and was cut. */
  truncated: boolean;
  /** MSG_CTRUNC: control data was cut; fds that did not fit were closed by the kernel/addon. */
  ctruncated: boolean;
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** An opaque handle for a watcher: poll()'s uv_poll one, or (sys/watch.ts) a shared watch's id. */
export interface PollHandle {
  /** Stop watching (idempotent). Does not close the fd: stop before closing it. */
  stop(): void;
  /** Change the watched UV event bits (throws ERR_DEVLEASE_CLOSED after stop()). */
  setEvents(events: number): void;
  /** Keep the event loop alive while watching (the default) / do not. */
  ref(): void;
  unref(): void;
}

export interface NativeAddon {
  // --- generic fd ---
  /** close(2); throws only EBADF (the number is released whatever else close says). */
  close(fd: number): void;
  /**
   * close(2) of a descriptor another process sent: at once if its close cannot wait on anyone (memory, an
   * anonymous inode, a pipe, an AF_UNIX socket), else on the addon's closer thread (native/close.cc), so it may
   * still be open when this returns, counted meanwhile against `senderUid` (the uid of the peer that sent it;
   * undefined or -1: not known, the global bound alone). Throws only EBADF.
   */
  closeReceived(fd: number, senderUid?: number): void;
  /** Descriptors queued to the closer thread and not yet closed. */
  closesPending(): number;
  /** Descriptors queued to the closer thread (not the one being closed) counted against `uid`. */
  closesQueuedFrom(uid: number): number;
  /**
   * How many may queue behind a close that does not return; with that many queued, recvInto from an untrusted
   * peer takes no fds (the kernel drops them unopened) and says so in recvIntoFds[1].
   */
  readonly closesQueueLimit: number;
  /**
   * How many of those one uid's fds may be (closesQueuedFrom); with that many queued, recvInto from an untrusted
   * peer of that uid takes no fds, as with the queue full. A quarter of closesQueueLimit (why: native/close.cc).
   */
  readonly closesQueueLimitPerUid: number;
  /**
   * For a child about to be exec'd: the closer thread's queued fds are left open across the exec (their close,
   * exec's close-on-exec, would wait on the same FLUSH) and stay queued until closesResume(). Their numbers,
   * which the child is to close.
   */
  closesHold(): number[];
  closesResume(): void;
  dup(fd: number): number; // F_DUPFD_CLOEXEC
  /** ioctl with an integer argument or a buffer (in/out). Returns the ioctl's return value. */
  ioctl(fd: number, request: number, arg: number | bigint | Uint8Array): number;
  pread(fd: number, buf: Uint8Array, offset: number | bigint): number;
  pwrite(fd: number, buf: Uint8Array, offset: number | bigint): number;
  read(fd: number, buf: Uint8Array): number;
  write(fd: number, buf: Uint8Array): number;
  /** open(2) with O_CLOEXEC added. */
  open(path: string, flags: number, mode?: number): number;
  /** fstat subset. */
  fstat(fd: number): { ino: bigint; dev: bigint; size: number; mode: number };
  /**
   * The same from statx(AT_STATX_DONT_SYNC): the kernel's cached attributes (a FUSE or NFS server is not asked),
   * with the mount id (null where the kernel gives none).
   */
  statCached(fd: number): { ino: bigint; dev: bigint; size: number; mode: number; mntId: number | null };
  setNonBlocking(fd: number, on: boolean): void;
  /** fcntl(F_GETFL): access mode (O_ACCMODE bits) and status flags. */
  statusFlags(fd: number): number;

  // --- readiness (uv_poll on the current loop; callback gets UV events bits: 1 readable, 2 writable, 4 disconnect) ---
  poll(fd: number, events: number, cb: (status: number, events: number) => void): PollHandle;
  /**
   * As poll(), through this thread's one epoll set (native/poll_shared.cc), for fds watched per lease that rarely
   * fire: returns the watcher's id for the three calls below.
   */
  pollShared(fd: number, events: number, cb: (status: number, events: number) => void): number;
  /** Stops watcher `id` (idempotent). */
  pollSharedStop(id: number): void;
  /** Changes its UV event bits (throws ERR_DEVLEASE_CLOSED once stopped). */
  pollSharedEvents(id: number, events: number): void;
  /** Whether it keeps the event loop alive (the default) or not; nothing once stopped. */
  pollSharedRef(id: number, ref: boolean): void;

  // --- AF_UNIX sockets (all non-blocking, cloexec); `stream`: SOCK_STREAM, else SOCK_SEQPACKET ---
  unixListen(path: string, mode: number, backlog: number, stream: boolean): number;
  unixConnect(path: string, stream: boolean): number;
  /** accept4; returns -1 on EAGAIN. */
  unixAccept(fd: number): number;
  /** socketpair(AF_UNIX, SOCK_STREAM or SOCK_SEQPACKET). */
  unixPair(stream: boolean): [number, number];
  /** sendmsg with MSG_NOSIGNAL and optional SCM_RIGHTS; returns bytes sent, or -1 on EAGAIN. */
  sendmsg(fd: number, data: Uint8Array, fds: number[]): number;
  /**
   * One datagram to systemd's NOTIFY_SOCKET (a path, or '@' and an abstract name), as sd_notify(3) sends it;
   * never blocks (a full queue throws EAGAIN), and starts no process.
   */
  sdNotify(address: string, message: Uint8Array): void;
  /**
   * recvmsg with MSG_CMSG_CLOEXEC into a buffer of `maxBytes`; null on EAGAIN; data.length 0 + eof on hang-up.
   * At most `maxFds` (default MAX_FDS) fds are installed; any beyond are closed and `ctruncated` is set.
   */
  recvmsg(fd: number, maxBytes: number, maxFds?: number): (RecvResult & { eof: boolean }) | null;
  /**
   * recvmsg straight into buf[offset, offset + length): the bytes read (0 with no fds on hang-up), or -1 on
   * EAGAIN. What came besides bytes is in recvIntoFds until the next recvInto on this thread. At most
   * `maxFds` fds are installed; any beyond are closed and the cut is reported there.
   */
  recvInto(
    fd: number,
    buf: Uint8Array,
    offset: number,
    length: number,
    maxFds: number,
    untrusted?: boolean,
    peerUid?: number,
  ): number;
  /**
   * The last recvInto's fds, one array per thread (no object per read): [0] how many fds came, [1] why control
   * data was cut (MSG_CTRUNC), RECV_CUT; [2, 2 + [0]) the fds, now the caller's (to be closed counted against
   * peerUid: Fd's senderUid).
   */
  readonly recvIntoFds: Int32Array;
  /** RLIMIT_NOFILE's soft limit, -1 if unlimited (getrlimit: opens nothing, so it answers with the table full). */
  nofileLimit(): number;
  peerCred(fd: number): PeerCred;
  /**
   * SO_PEERGROUPS (Linux >= 4.13): the peer's supplementary groups as they were at connect(), from the same
   * credentials as peerCred (its gid is the primary group, not always among these).
   */
  peerGroups(fd: number): number[];
  /** SO_PEERPIDFD (Linux >= 6.5); throws ENOPROTOOPT on older kernels. */
  peerPidfd(fd: number): number;
  /** Raise SO_SNDBUF (SO_SNDBUFFORCE when permitted) to `bytes`; returns the size the kernel set. */
  setSendBuffer(fd: number, bytes: number): number;

  // --- pidfd ---
  pidfdOpen(pid: number): number;
  pidfdSendSignal(pidfd: number, signal: number): void;
  /**
   * kcmp(a, b, KCMP_FILES): whether tasks `a` and `b` (pids or thread ids) share one file table. Throws ESRCH
   * (a task gone), EPERM (no ptrace read access to one), ENOSYS (a kernel without CONFIG_KCMP).
   */
  kcmpFiles(a: number, b: number): boolean;
  /**
   * The thread ids of process `pid` from position `from` (0: the first) of its /proc/<pid>/task listing, at
   * most `max`, in the kernel's thread-list order; [] past the last. One lseek to the position: the threads
   * before it cost no entry (the audit's rotating walk of file tables). Throws ENOENT (gone), EMFILE.
   */
  taskIdsFrom(pid: number, from: number, max: number): number[];
  /** Test support: fork a child that keeps this process's mappings, closes fds >= 3 and pauses; returns its pid. */
  forkPause(): number;

  // --- memfd ---
  memfdCreate(name: string, flags: number): number; // MFD_CLOEXEC always added
  ftruncate(fd: number, size: number): void;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads zero in every mapping, its pages freed untouched. */
  punchHole(fd: number, offset: number, length: number): void;
  addSeals(fd: number, seals: number): void;
  getSeals(fd: number): number;

  // --- mmap ---
  /**
   * mmap(MAP_SHARED): the mapped memory (shared, not copied), which is also the mapping's handle for the three
   * calls below. A SharedArrayBuffer cannot be detached: after mappingUnmap() (or a guarded revocation) it
   * reads zeros, and the range is munmapped when the buffer is garbage-collected. With `at` (page-aligned) the
   * mapping goes exactly there or fails with EEXIST (MAP_FIXED_NOREPLACE: never over another mapping; a kernel
   * before 4.17 takes it as a hint).
   */
  mmap(
    fd: number,
    length: number,
    prot: number,
    offset: number,
    guard: boolean,
    at?: bigint,
  ): SharedArrayBuffer;
  /** The start of `length` bytes of address space free right now (reserved and released at once). */
  findFreeRange(length: number): bigint;
  /**
   * Drop the file mapping now (idempotent): the range is replaced by private zero pages, so the file's last
   * reference goes at once while the buffer stays memory-safe. ERR_DEVLEASE_INVALID_ARG for a buffer mmap()
   * did not make.
   */
  mappingUnmap(buffer: SharedArrayBuffer): void;
  /**
   * mappingUnmap() of each buffer, with one mmap over each run of adjacent ranges of one protection (one TLB
   * flush per run, not per mapping); returns the mmap calls made. Throws the first mmap errno after doing the
   * rest (a run that failed stays file-mapped and guarded); ERR_DEVLEASE_INVALID_ARG as mappingUnmap, before
   * anything is done.
   */
  mappingUnmapMany(buffers: SharedArrayBuffer[]): number;
  /** True once the SIGBUS guard replaced the mapping with zero pages. */
  mappingRevoked(buffer: SharedArrayBuffer): boolean;
  /** The mapping's address in this process (where a neighbour is placed, the guard's key, diagnostics). */
  mappingAddress(buffer: SharedArrayBuffer): bigint;
  /** Guarded mappings revoked so far in this process (a file shrank under one); see Mapping.isRevoked(). */
  guardRevocations(): number;
  /** The same count as a Uint32Array of 2 (low word first) over the counter itself: a load, not a call. */
  guardRevocationsWord(): Uint32Array;
  /**
   * The process's SIGBUS guard table: how many guarded mappings it can hold at once (a guarded mmap past that
   * fails ERR_DEVLEASE_GUARD_TABLE_FULL) and how many it holds now (every thread's, the simulator's included).
   */
  guardSlots(): { capacity: number; inUse: number };
  /** Whether the guarded mapping starting at `address` was revoked (a thread holding its buffer, not its handle). */
  guardRevokedAt(address: bigint): boolean;
  /** Map `fd` over the guarded, unrevoked mapping at `address` of `length` bytes in one MAP_FIXED (ENOENT: none). */
  guardReplaceAt(address: bigint, length: number, fd: number): void;

  // --- eventfd ---
  eventfd(initval: number, flags: number): number; // EFD_CLOEXEC always added
  eventfdRead(fd: number): bigint | null; // null on EAGAIN
  eventfdWrite(fd: number, value: bigint | number): void;
  /**
   * A doorbell kick: add 1 to the eventfd, then sched_yield() once, so a thread the write woke onto this
   * CPU runs now rather than after the caller's time slice (a caller that spins next). false: the counter
   * was saturated (EAGAIN), a wake-up is pending anyway.
   */
  eventfdKick(fd: number): boolean;
  /** An epoll fd (O_CLOEXEC) watching `fds` (eventfds) for input, for waitSet(); the caller closes it. */
  waitSetCreate(fds: number[]): number;
  /**
   * Blocks the calling thread until one of the set's fds is readable or `timeoutMs` passes (negative or
   * Infinity: no timeout; sub-millisecond timeouts kept), then drains every readable one (up to 64 a call; the
   * rest end the next call at once), never blocking whatever their O_NONBLOCK. Returns how many were readable:
   * 0 when it timed out (or a signal ended the wait), at least 1 when the set was readable, even if another
   * reader drained it first.
   */
  waitSet(epfd: number, timeoutMs: number): number;

  // --- inotify ---
  inotifyInit(): number; // IN_NONBLOCK | IN_CLOEXEC
  inotifyAddWatch(fd: number, path: string, mask: number): number;
  inotifyRmWatch(fd: number, wd: number): void;
  /** Drain pending events; [] on EAGAIN. */
  inotifyRead(fd: number): { wd: number; mask: number; name: string }[];

  /**
   * F_SETLEASE probe: true if some other open description of the file exists (mappings keep theirs alive).
   * Needs file ownership or CAP_LEASE. The description passed must come from open(2): memfd_create's own
   * description is not counted by the kernel, so probing it is off by one (MemFd keeps a re-opened one).
   */
  leaseProbe(fd: number): boolean;

  // --- futex on a 32-bit word of a SharedArrayBuffer (shared, not private futex: crosses processes) ---
  /** Returns 'ok' (woken), 'not-equal' (value differed), or 'timed-out'. timeoutMs < 0: wait forever. */
  futexWait(
    buf: SharedArrayBuffer,
    index: number,
    expected: number,
    timeoutMs: number,
  ): 'ok' | 'not-equal' | 'timed-out';
  futexWake(buf: SharedArrayBuffer, index: number, count: number): number;

  // --- worker teardown: fds still registered when this environment ends are closed then ---
  /** This environment is the main thread (not a worker): it runs on libuv's default loop. */
  isMainThread: boolean;
  trackFd(fd: number): void;
  untrackFd(fd: number): void;

  // --- the classes syscall failures and misuse are thrown as (this environment) ---
  setErrorClasses(sysError: typeof SysError, misuseError: typeof MisuseError): void;

  // --- constants the TypeScript side needs ---
  constants: Record<string, number>;
}

// Loaded with process.dlopen, as require() would: node:module's createRequire loads ~7 builtin modules into
// every client process for this one call (issue 16).
const loaded = { exports: {} as NativeAddon };
process.dlopen(
  loaded,
  decodeURIComponent(new URL('../../../build/Release/devlease.node', import.meta.url).pathname),
);
const addon = loaded.exports;
if (typeof addon.setErrorClasses !== 'function' || typeof addon.isMainThread !== 'boolean') {
  throw new Error(
    'build/Release/devlease.node predates setErrorClasses and isMainThread: rebuild it with `npm run install`',
  );
}
addon.setErrorClasses(SysError, MisuseError);
/**
 * The addon itself, unless the test-only fail-nth hook was asked for at load (fail-nth.ts: one small module,
 * loaded always). Chosen synchronously: a top-level `await import()` here would make every module that
 * imports this one an async module, which CommonJS cannot require() (ERR_REQUIRE_ASYNC_MODULE).
 */
export const native: NativeAddon =
  process.env.DEVLEASE_FAIL_NTH === undefined ? addon : withFailNth(addon, process.env.DEVLEASE_FAIL_NTH);
