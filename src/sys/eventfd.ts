// An eventfd counter: a cheap cross-process doorbell (pass its fd over a
// StreamSocket). Always non-blocking: read() returns null when the
// counter is zero.
import { isSysError } from '../errors.js';
import { Fd } from './fd.js';
import { native } from './native.js';
import { READABLE, Watch, type WatchKind } from './watch.js';

const { EFD_NONBLOCK, EFD_SEMAPHORE } = native.constants as Record<string, number>;

export class EventFd {
  readonly fd: Fd;
  #watch: Watch | null = null;

  /** Adopts an eventfd (e.g. received from another process) and makes its description non-blocking. */
  static adopt(fd: Fd): EventFd {
    try {
      return new EventFd({ fd });
    } catch (err) {
      fd.close();
      throw err;
    }
  }

  /**
   * Creates an eventfd, or wraps `opts.fd` (taking ownership) and makes its description non-blocking: the watch
   * drains the counter until it reads nothing, and uv_poll, which once watched it, set O_NONBLOCK as a side effect
   * (the shared watch does not). adopt() is the same, closing the fd if that fails.
   */
  constructor(opts: { initval?: number; semaphore?: boolean; fd?: Fd } = {}) {
    const flags = EFD_NONBLOCK! | (opts.semaphore ? EFD_SEMAPHORE! : 0);
    if (opts.fd) native.setNonBlocking(opts.fd.fd, true);
    this.fd = opts.fd ?? new Fd(native.eventfd(opts.initval ?? 0, flags));
  }

  /** Reads (and resets, or in semaphore mode decrements) the counter; null if it is zero. */
  read(): bigint | null {
    return native.eventfdRead(this.fd.fd);
  }

  /** Adds `value` (default 1) to the counter, waking readers. */
  write(value: bigint | number = 1n): void {
    native.eventfdWrite(this.fd.fd, value);
  }

  /**
   * On each readiness, drains the counter and calls `cb` with the total
   * (in semaphore mode: the number of posts). Replaces a previous callback.
   * `kind` (sys/watch.ts): 'shared' for a notice watched per lease that rarely fires; 'own' (the default) for
   * one that fires often (an interrupt vector), where the shared set's extra epoll_wait per wake-up would cost.
   */
  onReadable(cb: (value: bigint) => void, kind: WatchKind = 'own'): void {
    const fd = this.fd.fd;
    this.stopWatching();
    this.#watch = new Watch(
      fd,
      READABLE,
      () => {
        let total = 0n;
        try {
          for (let v = this.#readIfOpen(); v !== null; v = this.#readIfOpen()) total += v;
        } catch (err) {
          // A read that failed took nothing (the counter keeps its value and the fd stays readable: the watch
          // calls again). Thrown here, on the event loop, it was an uncaught exception (fail-nth suite).
          if (!isSysError(err)) throw err;
        }
        if (total > 0n) cb(total);
      },
      kind,
    );
  }

  stopWatching(): void {
    this.#watch?.stop();
    this.#watch = null;
  }

  ref(): void {
    this.#watch?.ref();
  }

  unref(): void {
    this.#watch?.unref();
  }

  get closed(): boolean {
    return this.fd.closed;
  }

  close(): void {
    this.stopWatching();
    this.fd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #readIfOpen(): bigint | null {
    if (this.fd.closed) return null;
    return this.read();
  }
}
