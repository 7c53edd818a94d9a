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

const leakRegistry = new FinalizationRegistry<number>((fd) => {
  process.emitWarning(`devlease: fd ${fd} was garbage-collected without close(); closing it`, 'DevleaseLeak');
  try {
    if (trackForTeardown) native.untrackFd(fd);
    native.close(fd);
  } catch {
    // already gone: nothing to do
  }
});

export class Fd {
  #fd: number;
  constructor(fd: number) {
    if (!Number.isInteger(fd) || fd < 0) {
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `not a file descriptor: ${fd}`);
    }
    this.#fd = fd;
    leakRegistry.register(this, fd, this);
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
    return new Fd(native.dup(this.fd));
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
    native.close(fd);
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
  const numbers: number[] = [];
  for (const f of fds) if (!f.closed) numbers.push(f.release());
  if (numbers.length === 0) return;
  setImmediate(() => {
    for (const n of numbers) {
      try {
        native.close(n);
      } catch {
        // EBADF only (native close ignores the rest: close(2) frees the number whatever it says); here, with
        // the turn's callbacks run, it has nobody to go to
      }
    }
  });
}
