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

  constructor() {
    this.fd = new Fd(native.inotifyInit());
  }

  /** Adds (or replaces) the watch on `path`; returns its watch descriptor. */
  watch(path: string, mask: number, cb: (ev: InotifyEvent) => void): number {
    const wd = native.inotifyAddWatch(this.fd.fd, path, mask);
    this.#callbacks.set(wd, cb);
    if (this.#watch === null) {
      this.#watch = new Watch(this.fd.fd, READABLE, () => this.#dispatch());
      if (!this.#refed) this.#watch.unref();
    }
    return wd;
  }

  /** Removes a watch; no-op if it is already gone (e.g. the file was deleted). */
  unwatch(wd: number): void {
    const fd = this.fd.fd;
    if (!this.#callbacks.delete(wd)) return;
    try {
      native.inotifyRmWatch(fd, wd);
    } catch (err) {
      if (!isSysError(err, 'EINVAL')) throw err;
    }
    this.#stopIfIdle();
  }

  /** While watches exist, keep the event loop alive (the default) / do not. */
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

  close(): void {
    this.#watch?.stop();
    this.#watch = null;
    this.#callbacks.clear();
    this.fd.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #stopIfIdle(): void {
    if (this.#callbacks.size > 0) return;
    this.#watch?.stop();
    this.#watch = null;
  }

  #dispatch(): void {
    if (this.fd.closed) return;
    for (const ev of native.inotifyRead(this.fd.fd)) {
      if (ev.mask & IN_Q_OVERFLOW!) {
        // Events were lost: tell every watcher.
        for (const cb of [...this.#callbacks.values()]) cb({ mask: ev.mask, name: '' });
        continue;
      }
      const cb = this.#callbacks.get(ev.wd);
      if (ev.mask & IN_IGNORED!) this.#callbacks.delete(ev.wd);
      cb?.({ mask: ev.mask, name: ev.name });
    }
    this.#stopIfIdle();
  }
}
