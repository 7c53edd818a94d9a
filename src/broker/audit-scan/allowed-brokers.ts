// The other broker of an upgrade, as the slice audit sees it: it holds the
// device fd (and maps what it maps) as this broker does, so it is left out of
// the scan while it lives (auditor.ts, allowBroker). It is left out by pid,
// the only name /proc gives a process, and so held by pidfd: a pid is free
// for another process once its process is reaped, and the pidfd says when
// that is (PidFd.isAlive, the kernel's own handle, asked at each scan; and its
// exit watched, which drops it at once). A start time from /proc/<pid>/stat
// (field 22) would name the process too, but only to the clock tick, and read
// through the very pid in question. The pidfd's fdinfo `Pid:` line (-1 once
// reaped, on recent kernels) says the same as isAlive's signal 0, but as a
// file to open and parse at each check.

import { isSysError } from '../../errors.js';
import { PidFd } from '../../sys/pidfd.js';
import { isRunning } from './process-facts.js';

export class AllowedBrokers {
  /** By pid; null: no pidfd could be had, allowed by pid (until it is seen not running). */
  readonly #brokers = new Map<number, PidFd | null>();
  #closed = false;

  constructor(private readonly log: (line: string) => void) {}

  /**
   * Allow `pid`, which must be the other broker now (a child just spawned; the old broker, mid-handover): its
   * pidfd, taken here, names that process from then on.
   */
  allow(pid: number): void {
    if (this.#closed || this.#brokers.has(pid)) return;
    let pfd: PidFd;
    try {
      pfd = PidFd.open(pid);
    } catch (err) {
      if (isSysError(err, 'ESRCH')) return; // gone already: nothing to allow
      // By pid, as before pidfds: a reused pid unaudited for a while is the lesser harm than the other broker
      // reported, and killed, for the fd it holds by right.
      this.log(`audit: no pidfd of the other broker (pid ${pid}); allowed by pid: ${(err as Error).message}`);
      this.#brokers.set(pid, null);
      return;
    }
    this.#brokers.set(pid, pfd);
    try {
      pfd.unref(); // the audit does not keep the broker running
      pfd.onExit(() => this.#drop(pid));
    } catch (err) {
      this.log(
        `audit: the other broker's exit (pid ${pid}) is not watched; scans check it: ${(err as Error).message}`,
      );
    }
  }

  /** The pids of the allowed brokers still there; those gone are dropped (their pid may be another's now). */
  alive(): number[] {
    for (const [pid, pfd] of this.#brokers) {
      let alive: boolean;
      try {
        alive = pfd ? pfd.isAlive() : isRunning(pid);
      } catch {
        alive = true; // cannot tell: kept, as the other broker killed for its fd is the worse mistake
      }
      if (!alive) this.#drop(pid);
    }
    return [...this.#brokers.keys()];
  }

  /** Those allowed now, not asked again (see alive()). */
  get pids(): number[] {
    return [...this.#brokers.keys()];
  }

  /** Idempotent: closes every pidfd; nothing is allowed after. */
  close(): void {
    this.#closed = true;
    for (const pid of [...this.#brokers.keys()]) this.#drop(pid);
  }

  #drop(pid: number): void {
    this.#brokers.get(pid)?.close();
    this.#brokers.delete(pid);
  }
}
