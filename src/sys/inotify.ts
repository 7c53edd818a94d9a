// An inotify instance with per-watch callbacks, read via uv_poll.
//
// Watching `/proc/self/fd/N` watches the file behind descriptor N (the
// magic link is followed), which is how the release of memfd descriptions
// is observed (see memfd.ts). inotify gives one watch per inode: watching
// the same file again returns the same wd and replaces its mask and callback.
import { isSysError } from '../errors.js';
import { Fd } from './fd.js';
import { native } from './native.js';
import { READABLE, Watch } from './watch.js';

const { IN_IGNORED, IN_Q_OVERFLOW } = native.constants as Record<string, number>;

export interface InotifyEvent {
  mask: number;
  /** Name inside a watched directory; '' for the watched file itself. */
  name: string;
}

export class Inotify {
  readonly fd: Fd;
  #callbacks = new Map<number, (ev: InotifyEvent) => void>();
  #watch: Watch | null = null;
  #refed = true;
  /** Paused: nothing is read (events stay queued in the kernel) until resume(). */
  #paused = false;

  /** A new instance, or `adopted` (an instance another process made and handed over, with its watches). */
  constructor(adopted?: Fd) {
    this.fd = adopted ?? new Fd(native.inotifyInit());
  }

  /** Adds (or replaces) the watch on `path`; returns its watch descriptor. */
  watch(path: string, mask: number, cb: (ev: InotifyEvent) => void): number {
    const wd = native.inotifyAddWatch(this.fd.fd, path, mask);
    if (this.#watch === null && !this.#paused) {
      try {
        this.#watch = new Watch(this.fd.fd, READABLE, () => this.#dispatch());
      } catch (err) {
        // No watch, no caller holding `wd`: the kernel watch goes too, or its events would reach nobody's
        // callback (a callback kept here ran later against a caller that never got `wd` — a crash the
        // fail-nth suite found).
        if (!this.#callbacks.has(wd)) this.#rmWatch(wd);
        throw err;
      }
      if (!this.#refed) this.#watch.unref();
    } else if (this.#callbacks.size === 0 && this.#refed) {
      this.#watch?.ref(); // kept, unref'd, since the last watch went (#idle)
    }
    this.#callbacks.set(wd, cb);
    return wd;
  }

  /** Removes a watch; no-op if it is already gone (e.g. the file was deleted). */
  unwatch(wd: number): void {
    this.fd.fd; // throws ERR_DEVLEASE_CLOSED after close()
    if (!this.#callbacks.delete(wd)) return;
    this.#rmWatch(wd);
    this.#idle();
  }

  #rmWatch(wd: number): void {
    try {
      native.inotifyRmWatch(this.fd.fd, wd);
    } catch (err) {
      if (!isSysError(err, 'EINVAL')) throw err;
    }
  }

  /**
   * Stop reading: events stay queued in the kernel, in order, for whoever reads next — this instance after
   * resume(), or the process it was handed to (a broker upgrade). Idempotent.
   */
  pause(): void {
    this.#paused = true;
    this.#watch?.stop();
    this.#watch = null;
  }

  /** Read again (what queued meanwhile first). Idempotent. */
  resume(): void {
    if (!this.#paused || this.fd.closed) return;
    this.#paused = false;
    if (this.#callbacks.size === 0 || this.#watch) return;
    this.#watch = new Watch(this.fd.fd, READABLE, () => this.#dispatch());
    if (!this.#refed) this.#watch.unref();
  }

  /** While watches exist, keep the event loop alive (the default) / do not. */
  ref(): void {
    this.#refed = true;
    if (this.#callbacks.size > 0) this.#watch?.ref();
  }

  unref(): void {
    this.#refed = false;
    this.#watch?.unref();
  }

  get closed(): boolean {
    return this.fd.closed;
  }

  close(): void {
    this.#watch?.stop();
    this.#watch = null;
    this.#callbacks.clear();
    this.fd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * No watch left: the poll handle stays (a broker watching one lease's slices at a time would otherwise stop
   * it and make it again per lease, ~50 µs each) but no longer keeps the event loop alive.
   */
  #idle(): void {
    if (this.#callbacks.size > 0) return;
    this.#watch?.unref();
  }

  #dispatch(): void {
    if (this.fd.closed) return;
    let events: ReturnType<typeof native.inotifyRead>;
    try {
      events = native.inotifyRead(this.fd.fd);
    } catch (err) {
      // Nothing was read (ENOMEM, EINTR): the events stay queued and the fd readable, so the watch calls
      // again. Thrown here, on the event loop, it was an uncaught exception (found by the fail-nth suite).
      if (isSysError(err)) return;
      throw err;
    }
    for (const ev of events) {
      if (ev.mask & IN_Q_OVERFLOW!) {
        // Events were lost: tell every watcher.
        for (const cb of [...this.#callbacks.values()]) cb({ mask: ev.mask, name: '' });
        continue;
      }
      const cb = this.#callbacks.get(ev.wd);
      if (ev.mask & IN_IGNORED!) this.#callbacks.delete(ev.wd);
      cb?.({ mask: ev.mask, name: ev.name });
    }
    this.#idle();
  }
}
