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

/** A `shared` watch's id as a PollHandle: a plain object, no native handle and no finalizer (poll_shared.cc). */
class SharedHandle implements PollHandle {
  constructor(readonly id: number) {}
  stop(): void {
    native.pollSharedStop(this.id);
  }
  setEvents(events: number): void {
    native.pollSharedEvents(this.id, events);
  }
  ref(): void {
    native.pollSharedRef(this.id, true);
  }
  unref(): void {
    native.pollSharedRef(this.id, false);
  }
}

export class Watch {
  #handle: PollHandle | null;
  #events: number;

  /** Starts watching `fd` for `events` at once. Stop before closing the fd. */
  constructor(fd: number, events: number, cb: PollCallback, kind: WatchKind = 'own') {
    this.#handle =
      kind === 'shared' ? new SharedHandle(native.pollShared(fd, events, cb)) : native.poll(fd, events, cb);
    this.#events = events;
  }

  get events(): number {
    return this.#events;
  }

  /** Changes the interest set (no-op once stopped, or when unchanged). */
  set events(events: number) {
    if (this.#handle === null || events === this.#events) return;
    this.#handle.setEvents(events);
    this.#events = events;
  }

  get stopped(): boolean {
    return this.#handle === null;
  }

  ref(): void {
    this.#handle?.ref();
  }

  unref(): void {
    this.#handle?.unref();
  }

  /** Idempotent. */
  stop(): void {
    const handle = this.#handle;
    this.#handle = null;
    handle?.stop();
  }
}
