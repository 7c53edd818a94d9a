// Slice fds handed to clients, and the observation of their release.
//
// The device gives the broker one fd per slice unit (its "device
// description"). The broker never hands that description out: each time a
// client asks for the region it gets a fresh description re-opened through
// /proc/self/fd/N. inotify reports IN_OPEN and IN_CLOSE_* for descriptions
// opened by path (it is silent for the one memfd_create returned), and a
// description is closed only when its last fd is closed AND its last mapping
// is gone. So, counting opens and closes on the slice's inode after the watch
// is set, "count back to zero" means every handed-out description has been
// closed and unmapped by everyone who had it.
//
// Caveat (documented in docs/ARCHITECTURE.md): the count is per inode, so any
// other process opening the same memfd by path (e.g. through /proc/<pid>/fd)
// is counted too, which only ever delays the release — never hastens it.
// Unless events are lost: when the inotify queue overflows (16,384 events: a
// holder opening its slice through /proc in a loop can do it), every unit
// watched then has lost opens or closes, so its count may say released while
// a mapping remains, or never say it. Such a unit is `countLost`: its waiters
// are let go, and a reclaim that did not revoke its slices quarantines the
// resources (lease-reclaim.ts) rather than trust the count.

import { EventEmitter } from 'node:events';
import { Fd, IN_CLOSE, IN_OPEN, IN_Q_OVERFLOW, Inotify, native } from '../sys/index.js';

export class SliceUnit extends EventEmitter {
  /** The device's description of this slice unit (kept to revoke with). */
  readonly deviceFd: Fd;
  #open = 0;
  /** Our own re-opens whose IN_OPEN has not been read yet (counted eagerly, so a release is never seen early). */
  #ownOpens = 0;
  #wd = -1;
  #released = false;
  #countLost = false;

  constructor(deviceFd: Fd) {
    super();
    this.deviceFd = deviceFd;
  }

  /**
   * A unit another broker handed over (an upgrade) with `outstanding` descriptions out, `ownOpens` of them
   * re-opened by that broker with their IN_OPEN not yet read. Its watch is the same one: the watcher adopted
   * the old broker's inotify instance (SliceWatcher.adopt), whose queue holds every event since the old
   * broker's count, so no open or close between the two brokers is missed. `countLost`: the old broker's count
   * lost events (an overflow it read, or one still queued: the new broker reads that one itself).
   */
  static adopt(
    deviceFd: Fd,
    outstanding: number,
    watcher: SliceWatcher,
    ownOpens = 0,
    countLost = false,
  ): SliceUnit {
    const u = new SliceUnit(deviceFd);
    u.#open = outstanding;
    u.#ownOpens = ownOpens;
    // A count the old broker lost stays lost: the new broker must not trust it either (its reclaim quarantines).
    u.#countLost = countLost;
    if (outstanding > 0) u.#wd = watcher.watch(u);
    return u;
  }

  /** Events of this unit's inode were lost (the inotify queue overflowed): `outstanding` cannot be trusted. */
  get countLost(): boolean {
    return this.#countLost;
  }

  /** Outstanding descriptions handed out and not yet seen released. */
  get outstanding(): number {
    return this.#open;
  }

  /** Our re-opens whose IN_OPEN is still queued (an upgrade carries the number with the queue). */
  get ownOpens(): number {
    return this.#ownOpens;
  }

  /** A new description of the slice for a client. The caller sends it and closes its copy. */
  handOut(watcher: SliceWatcher): Fd {
    if (this.#wd < 0) this.#wd = watcher.watch(this);
    const reopened = new Fd(
      native.open(`/proc/self/fd/${this.deviceFd.fd}`, native.constants.O_RDWR as number),
    );
    this.#open++;
    this.#ownOpens++;
    return reopened;
  }

  /** Called by the watcher for each IN_OPEN / IN_CLOSE on the inode, and for a queue overflow. */
  onEvent(mask: number): void {
    if (mask & IN_Q_OVERFLOW!) {
      // Nothing more the count says can be believed; whoever waits for it is let go to decide otherwise.
      this.#countLost = true;
      this.emit('idle');
      return;
    }
    if (mask & IN_OPEN) {
      if (this.#ownOpens > 0) this.#ownOpens--;
      else this.#open++;
    }
    if (mask & IN_CLOSE) this.#open = Math.max(0, this.#open - 1);
    if (this.#open === 0) this.emit('idle');
  }

  /** Resolve once every handed-out description has been closed and unmapped, or the count was lost. */
  whenReleased(): Promise<void> {
    if (this.#open === 0 || this.#countLost) return Promise.resolve();
    return new Promise((resolve) => this.once('idle', resolve));
  }

  dispose(watcher: SliceWatcher): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#wd >= 0) watcher.unwatch(this.#wd, this);
    this.deviceFd.close();
  }
}

/** One inotify instance for all slices of the broker, made on first use (devices without slice fds need none). */
export class SliceWatcher {
  #inotifyHandle: Inotify | null = null;
  #closed = false;
  get #inotify(): Inotify {
    if (this.#closed)
      throw Object.assign(new Error('slice watcher is closed'), { code: 'ERR_DEVLEASE_CLOSED' });
    if (!this.#inotifyHandle) {
      this.#inotifyHandle = new Inotify();
      if (this.#paused) this.#inotifyHandle.pause();
    }
    return this.#inotifyHandle;
  }
  readonly #byWd = new Map<number, Set<SliceUnit>>();
  #paused = false;

  /**
   * Take over another broker's inotify instance (an upgrade), paused until resume(): its queue holds the
   * events the old broker has not read, which are this broker's to count once it owns the leases. Watching a
   * unit's inode again gives the same wd. Throws if this watcher already made an instance of its own.
   */
  adopt(fd: Fd): void {
    if (this.#inotifyHandle) throw new Error('the slice watcher has an inotify instance already');
    this.#inotifyHandle = new Inotify(fd);
    this.pause();
  }

  /** The inotify instance's fd (an upgrade hands it over), or null if none was ever needed. */
  get fd(): Fd | null {
    return this.#inotifyHandle?.fd ?? null;
  }

  /** Stop reading events, which stay queued (an upgrade's hold: the queue may go to the next broker). */
  pause(): void {
    this.#paused = true;
    this.#inotifyHandle?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#inotifyHandle?.resume();
  }

  /** Called once for each queue overflow read, after every watched unit has been marked (the broker audits it). */
  onOverflow: (() => void) | null = null;
  #overflowQueued = false;

  watch(unit: SliceUnit): number {
    const wd = this.#inotify.watch(`/proc/self/fd/${unit.deviceFd.fd}`, IN_OPEN | IN_CLOSE, (ev) => {
      for (const u of this.#byWd.get(wd) ?? []) u.onEvent(ev.mask);
      // The inotify instance hands an overflow to every watch: one report, once all of them have it.
      if (ev.mask & IN_Q_OVERFLOW! && !this.#overflowQueued) {
        this.#overflowQueued = true;
        queueMicrotask(() => {
          this.#overflowQueued = false;
          this.onOverflow?.();
        });
      }
    });
    const set = this.#byWd.get(wd) ?? new Set<SliceUnit>();
    this.#byWd.set(wd, set);
    set.add(unit);
    return wd;
  }

  unwatch(wd: number, unit: SliceUnit): void {
    const set = this.#byWd.get(wd);
    set?.delete(unit);
    if (set && set.size === 0) {
      this.#byWd.delete(wd);
      try {
        // Never through the lazy getter: a unit disposed after close() must not make a new inotify.
        this.#inotifyHandle?.unwatch(wd);
      } catch {
        // the inode may already be gone (the watch is removed with it)
      }
    }
  }

  /** Idempotent; afterwards watch() throws ERR_DEVLEASE_CLOSED and unwatch() has nothing to do. */
  close(): void {
    this.#closed = true;
    this.#inotifyHandle?.close();
    this.#inotifyHandle = null;
    this.#byWd.clear();
  }
}
