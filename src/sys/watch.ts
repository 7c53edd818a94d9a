// Readiness watching shared by the handle classes: a thin owner of a native
// watcher that remembers its interest set and ref state.
import { native, type PollHandle } from './native.js';

/** UV event bits (uv_poll_event). */
export const READABLE = 1;
export const WRITABLE = 2;
export const DISCONNECT = 4;

export type PollCallback = (status: number, events: number) => void;

/**
 * How a fd is watched. `own`: a uv_poll handle of its own, the loop's epoll reporting it directly: for fds that
 * wake the process often (sockets, a wake-up per message; interrupt vectors). `shared`: one epoll_ctl to start
 * and one to stop, in this thread's epoll set (native/poll_shared.cc), which costs every wake-up one epoll_wait
 * more: for the fds watched per lease that rarely fire (a lease's notice eventfds, pidfds), where uv_poll's
 * set-up (six system calls over a watch's life) was a measured part of a lease's cost (issue 16). The same
 * callbacks either way; a fd may be watched once in each (uv_poll refuses a second watch of its own, EEXIST, as
 * the set does).
 */
export type WatchKind = 'own' | 'shared';

export class Watch {
  /** The uv_poll handle of an `own` watch; null when shared or stopped. */
  #handle: PollHandle | null = null;
  /** The set's watcher id of a `shared` watch; 0 when own or stopped. */
  #id = 0;
  #events: number;

  /** Starts watching `fd` for `events` at once. Stop before closing the fd. */
  constructor(fd: number, events: number, cb: PollCallback, kind: WatchKind = 'own') {
    if (kind === 'shared') this.#id = native.pollShared(fd, events, cb);
    else this.#handle = native.poll(fd, events, cb);
    this.#events = events;
  }

  get events(): number {
    return this.#events;
  }

  /** Changes the interest set (no-op once stopped, or when unchanged). */
  set events(events: number) {
    if (this.stopped || events === this.#events) return;
    if (this.#id !== 0) native.pollSharedEvents(this.#id, events);
    else this.#handle?.setEvents(events);
    this.#events = events;
  }

  get stopped(): boolean {
    return this.#handle === null && this.#id === 0;
  }

  ref(): void {
    if (this.#id !== 0) native.pollSharedRef(this.#id, true);
    else this.#handle?.ref();
  }

  unref(): void {
    if (this.#id !== 0) native.pollSharedRef(this.#id, false);
    else this.#handle?.unref();
  }

  /** Idempotent. */
  stop(): void {
    const handle = this.#handle;
    const id = this.#id;
    this.#handle = null;
    this.#id = 0;
    if (id !== 0) native.pollSharedStop(id);
    handle?.stop();
  }
}
