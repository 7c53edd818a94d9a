// A pidfd: a process handle that cannot be confused by pid reuse. It turns
// readable when the process exits, which onExit() watches (in the thread's shared epoll set, sys/watch.ts).

import { constants as osConstants } from 'node:os';
import { isSysError, misuse } from '../errors.js';
import { Fd } from './fd.js';
import { native } from './native.js';
import { readProcText } from './proc-text.js';
import { READABLE, Watch } from './watch.js';

export class PidFd {
  readonly pid: number;
  readonly fd: Fd;
  #watch: Watch | null = null;
  #exitCallbacks: (() => void)[] = [];
  #exited = false;
  #refed = true;

  /** pidfd_open(pid). Throws ESRCH if there is no such process. */
  static open(pid: number): PidFd {
    return new PidFd(new Fd(native.pidfdOpen(pid)), pid);
  }

  /** Adopts a pidfd (e.g. from SO_PEERPIDFD or another process); its pid is read from /proc/self/fdinfo. */
  static adopt(fd: Fd): PidFd {
    let pid = -1;
    try {
      const match = /^Pid:\s*(-?\d+)/m.exec(readProcText(`/proc/self/fdinfo/${fd.fd}`));
      pid = match ? Number(match[1]) : -1;
    } catch (err) {
      fd.close();
      throw err;
    }
    return new PidFd(fd, pid);
  }

  /**
   * Takes ownership of `fd`. `pid` is -1 when `adopt` finds the process already gone; a peer's pidfd
   * (peerPidfdOf) keeps SO_PEERCRED's number. Exit is what onExit reports, not `pid`.
   */
  constructor(fd: Fd, pid: number) {
    this.fd = fd;
    this.pid = pid;
  }

  /** Calls `cb` once when the process exits (at once, asynchronously, if it already has). */
  onExit(cb: () => void): void {
    const fd = this.fd.fd;
    if (this.#exited) {
      process.nextTick(cb);
      return;
    }
    this.#exitCallbacks.push(cb);
    if (this.#watch !== null) return;
    this.#watch = new Watch(fd, READABLE, () => this.#onExit(), 'shared');
    if (!this.#refed) this.#watch.unref();
  }

  /** True once the exit was seen by onExit()'s watch. */
  get exited(): boolean {
    return this.#exited;
  }

  sendSignal(sig: NodeJS.Signals | number): void {
    const n = typeof sig === 'number' ? sig : (osConstants.signals as Record<string, number>)[sig];
    if (n === undefined || !Number.isInteger(n))
      throw misuse('ERR_DEVLEASE_INVALID_ARG', `unknown signal ${sig}`);
    native.pidfdSendSignal(this.fd.fd, n);
  }

  /**
   * Whether the process is still there, asked of the kernel now: pidfd_send_signal with signal 0, which the
   * kernel answers ESRCH once the process is reaped, when its pid becomes free for another process. A zombie is
   * still there (and still holds its pid). Synchronous, unlike onExit(); other failures are thrown.
   */
  isAlive(): boolean {
    try {
      native.pidfdSendSignal(this.fd.fd, 0);
      return true;
    } catch (err) {
      if (isSysError(err, 'ESRCH')) return false;
      if (isSysError(err, 'EPERM')) return true; // there, only not ours to signal
      throw err;
    }
  }

  /** Keep the event loop alive while waiting for the exit (the default) / do not. */
  ref(): void {
    this.#refed = true;
    this.#watch?.ref();
  }

  unref(): void {
    this.#refed = false;
    this.#watch?.unref();
  }

  get closed(): boolean {
    return this.fd.closed;
  }

  /** Idempotent; pending onExit callbacks are dropped. */
  close(): void {
    this.#watch?.stop();
    this.#watch = null;
    this.#exitCallbacks = [];
    this.fd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #onExit(): void {
    this.#watch?.stop();
    this.#watch = null;
    this.#exited = true;
    const callbacks = this.#exitCallbacks;
    this.#exitCallbacks = [];
    for (const cb of callbacks) cb();
  }
}
