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

/** Closes a descriptor as its origin needs: one another process sent may be on a file system whose close waits. */
const closeNumber = (fd: number, received: boolean): void =>
  received ? native.closeReceived(fd) : native.close(fd);

// The held value is the number, bitwise-negated for a received one (no object per Fd).
const leakRegistry = new FinalizationRegistry<number>((held) => {
  const fd = held < 0 ? ~held : held;
  process.emitWarning(`devlease: fd ${fd} was garbage-collected without close(); closing it`, 'DevleaseLeak');
  try {
    if (trackForTeardown) native.untrackFd(fd);
    closeNumber(fd, held < 0);
  } catch {
    // already gone: nothing to do
  }
});

/** Fd's option for a descriptor another process sent (SCM_RIGHTS). */
export const RECEIVED = Object.freeze({ received: true });

export class Fd {
  #fd: number;
  /**
   * Sent by another process (SCM_RIGHTS), or a dup of one: its file may be on a file system whose close waits
   * on that process (FUSE) or a server, so close() hands it to the addon's closer thread unless a look that asks
   * no file system says otherwise (native/close.cc). It may then still be open for a moment after close().
   */
  readonly received: boolean;
  constructor(fd: number, opts?: { received?: boolean }) {
    if (!Number.isInteger(fd) || fd < 0) {
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `not a file descriptor: ${fd}`);
    }
    this.#fd = fd;
    this.received = opts?.received === true;
    leakRegistry.register(this, this.received ? ~fd : fd, this);
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
    return new Fd(native.dup(this.fd), this.received ? RECEIVED : undefined);
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
    closeNumber(fd, this.received);
  }
  [Symbol.dispose](): void {
    this.close();
  }
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
  // A received one's number is kept bitwise-negated, as in the leak registry.
  const numbers: number[] = [];
  for (const f of fds) {
    if (f.closed) continue;
    const received = f.received;
    const n = f.release();
    numbers.push(received ? ~n : n);
  }
  if (numbers.length === 0) return;
  setImmediate(() => {
    for (const n of numbers) {
      try {
        closeNumber(n < 0 ? ~n : n, n < 0);
      } catch {
        // EBADF only (native close ignores the rest: close(2) frees the number whatever it says); here, with
        // the turn's callbacks run, it has nobody to go to
      }
    }
  });
}
