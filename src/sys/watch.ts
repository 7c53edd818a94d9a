// Readiness watching shared by the handle classes: a thin owner of a native
// uv_poll handle that remembers its interest set and ref state.
import { native, type PollHandle } from './native.js';

/** UV event bits (uv_poll_event). */
export const READABLE = 1;
export const WRITABLE = 2;
export const DISCONNECT = 4;

export type PollCallback = (status: number, events: number) => void;

export class Watch {
  #handle: PollHandle | null;
  #events: number;

  /** Starts watching `fd` for `events` at once. Stop before closing the fd. */
  constructor(fd: number, events: number, cb: PollCallback) {
    this.#handle = native.poll(fd, events, cb);
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
