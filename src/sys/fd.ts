// An owned file descriptor: one owner, idempotent close(), disposal, and a
// finalization safety net that closes (and warns about) an fd whose owner
// forgot it.
import { closedError, misuse } from '../errors.js';
import { native } from './native.js';

// worker.terminate() runs no finalizers: in a worker, the addon closes the
// fds still owned when the worker's environment is torn down. (On the main
// thread, process exit does that.) The addon says which thread this is:
// node:worker_threads would load ~30 builtin modules into every client.
const trackForTeardown = !native.isMainThread;

/**
 * Closes a descriptor as its origin needs: one another process sent may be on a file system whose close waits,
 * and is counted against its sender's uid (null: not known) while it waits for the closer thread.
 */
const closeNumber = (fd: number, received: boolean, senderUid: number | null): void =>
  received ? native.closeReceived(fd, senderUid ?? -1) : native.close(fd);

// The held value is the number, bitwise-negated for a received one (no object per Fd); a received one with a
// known sender is held with its uid (a uid and an fd number do not fit one safe integer together).
type Held = number | { fd: number; senderUid: number };
const leakRegistry = new FinalizationRegistry<Held>((held) => {
  const fd = typeof held === 'number' ? (held < 0 ? ~held : held) : held.fd;
  process.emitWarning(`devlease: fd ${fd} was garbage-collected without close(); closing it`, 'DevleaseLeak');
  try {
    if (trackForTeardown) native.untrackFd(fd);
    if (typeof held === 'number') closeNumber(fd, held < 0, null);
    else closeNumber(fd, true, held.senderUid);
  } catch {
    // already gone: nothing to do
  }
});

export interface FdOptions {
  /** Sent by another process (SCM_RIGHTS), or a copy of such a descriptor. */
  received?: boolean;
  /** With `received`: the uid of the peer that sent it (SO_PEERCRED), if known. */
  senderUid?: number | null;
}

/** Fd's option for a descriptor another process sent (SCM_RIGHTS), whose sender is not known (or trusted). */
export const RECEIVED: FdOptions = Object.freeze({ received: true });

/** Fd's option for a descriptor a peer of uid `uid` sent (null: not known, as RECEIVED). */
export function receivedFrom(uid: number | null): FdOptions {
  return uid === null ? RECEIVED : Object.freeze({ received: true, senderUid: uid });
}

export class Fd {
  #fd: number;
  /**
   * Sent by another process (SCM_RIGHTS), or a dup of one: its file may be on a file system whose close waits
   * on that process (FUSE) or a server, so close() hands it to the addon's closer thread unless a look that asks
   * no file system says otherwise (native/close.cc). It may then still be open for a moment after close().
   */
  readonly received: boolean;
  /**
   * Of a received one, the uid of the peer that sent it (its socket's SO_PEERCRED), kept by dups and relayed
   * copies; null if not known (the broker's own, a trusted peer's, one an old broker handed over). While its
   * close waits on the closer thread it counts against that uid's share of the queue, which is what confines a
   * user who holds a close up to refusing its own clients' fds (native/close.cc).
   */
  readonly senderUid: number | null;
  constructor(fd: number, opts?: FdOptions) {
    if (!Number.isInteger(fd) || fd < 0) {
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `not a file descriptor: ${fd}`);
    }
    this.#fd = fd;
    this.received = opts?.received === true;
    const uid = opts?.senderUid;
    // Only a uid the addon takes (0 .. 2^32 - 2): a bad one would make closeReceived() throw after this Fd let go
    // of its number, leaking it. Anything else is no sender known (the global bound only).
    this.senderUid =
      this.received && typeof uid === 'number' && Number.isInteger(uid) && uid >= 0 && uid <= 0xfffffffe
        ? uid
        : null;
    const held = this.received ? (this.senderUid === null ? ~fd : { fd, senderUid: this.senderUid }) : fd;
    leakRegistry.register(this, held, this);
    if (trackForTeardown) native.trackFd(fd);
  }
  /** The descriptor number; throws ERR_DEVLEASE_CLOSED after close(). */
  get fd(): number {
    if (this.#fd < 0) throw closedError('fd');
    return this.#fd;
  }
  get closed(): boolean {
    return this.#fd < 0;
  }
  /** A new owned descriptor for the same open file description (F_DUPFD_CLOEXEC). */
  dup(): Fd {
    return new Fd(native.dup(this.fd), this.received ? receivedFrom(this.senderUid) : undefined);
  }
  /** Give up ownership: the caller now owns the returned number. */
  release(): number {
    const fd = this.fd;
    leakRegistry.unregister(this);
    if (trackForTeardown) native.untrackFd(fd);
    this.#fd = -1;
    return fd;
  }
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    leakRegistry.unregister(this);
    if (trackForTeardown) native.untrackFd(fd);
    closeNumber(fd, this.received, this.senderUid);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A dup of `f` kept as a received descriptor (a relayed copy, closed as a client's would be): with f's sender
 * if f is an Fd received from a known uid; a bare number's origin, or an Fd of this process's own, is not known
 * here, and is taken as received from nobody known.
 */
export function receivedCopy(f: Fd | number): Fd {
  const sender = f instanceof Fd ? f.senderUid : null;
  return new Fd(native.dup(fdNumber(f)), receivedFrom(sender));
}

/** The descriptor number of an owned Fd or a plain number (validated; throws ERR_DEVLEASE_CLOSED for a closed Fd). */
export function fdNumber(fd: Fd | number): number {
  if (fd instanceof Fd) return fd.fd;
  if (!Number.isInteger(fd) || fd < 0) {
    throw misuse('ERR_DEVLEASE_INVALID_ARG', `not a file descriptor: ${fd}`);
  }
  return fd;
}

/**
 * Close `fds` once this turn of the event loop has run its callbacks and promise reactions (setImmediate), not
 * now. The last close of a file frees what it holds inside close(2): a killed client's 64 DMA memfds, their
 * inodes and pages, cost a broker 300-550 µs of its one thread before its reclaim could go on (issue 16,
 * seventeenth pass); so closed, the reclaim is done first. Every Fd is closed from here on as far as this
 * process's code can tell; its number stays taken in the kernel until then, so no open is handed it before.
 * Callbacks of the loop turn's poll phase may run before them; no I/O that comes after does. In a worker
 * thread the fds are closed at once. (On libuv's threadpool the closes cost more than they saved: waking its
 * threads is what these machines do slowest.)
 */
export function closeSoon(fds: Iterable<Fd>): void {
  // A worker's fds are closed with its environment (trackForTeardown), which a pending immediate may not see.
  if (trackForTeardown) {
    for (const f of fds) f.close();
    return;
  }
  // A received one's number is kept bitwise-negated, as in the leak registry, its sender's uid beside it.
  const numbers: number[] = [];
  const senders: (number | null)[] = [];
  for (const f of fds) {
    if (f.closed) continue;
    const received = f.received;
    senders.push(f.senderUid);
    const n = f.release();
    numbers.push(received ? ~n : n);
  }
  if (numbers.length === 0) return;
  setImmediate(() => {
    for (let i = 0; i < numbers.length; i++) {
      const n = numbers[i]!;
      try {
        closeNumber(n < 0 ? ~n : n, n < 0, senders[i] ?? null);
      } catch {
        // EBADF only (native close ignores the rest: close(2) frees the number whatever it says); here, with
        // the turn's callbacks run, it has nobody to go to
      }
    }
  });
}
