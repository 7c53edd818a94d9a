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
