// The audit of direct (audited) slices: after a client was handed the device
// fd to map its slice, the broker checks from /proc (proc-scan.ts) that
//   (a) no process but the broker holds an fd of the device, and
//   (b) every mapping of the device lies inside a slice leased to the mapping
//       process's lease holder (the holder, a process it forked, or a process
//       already seen mapping that slice legitimately: a forked child outlives
//       its parent and is re-parented).
// Scans run after each hand-off, every `periodMs`, and (coalesced, after the
// reply: never on a request's path) at each control request of an audited
// lease. A violation is one audit record naming pid, exe and finding, then
// the configured action. The same scan observes releases: a lease's slice is
// free only when no process maps any of it any more.

import { AllowedBrokers } from './allowed-brokers.js';
import type { AuditorHost, AuditorState, DirectAuditConfig, Finding, Violation } from './audit-types.js';
import { adoptedEntry, type Entry, entryState } from './entries.js';
import { TableCursors } from './file-tables.js';
import { killMappersOf, killRecorded } from './kill.js';
import { type FileIdentity, type MappingFound, type ScanResult, scanProc } from './proc-scan.js';
import { descendsFrom, isRunning, processFacts } from './process-facts.js';
import { ReportOnce } from './report-once.js';
import { ScanPacer } from './scan-pacing.js';

export {
  type AuditAction,
  type AuditorHost,
  type AuditorState,
  DEFAULT_DIRECT_AUDIT,
  type DirectAuditConfig,
  type Finding,
  type Violation,
} from './audit-types.js';

export class SliceAuditor {
  readonly #entries = new Map<string, Entry>();
  /** Violations and audit-incomplete recorded, once while each lasts (report-once.ts). */
  readonly #reported = new ReportOnce();
  /** Where each large process's walk of threads' own file tables goes on at the next scan (file-tables.ts). */
  readonly #cursors = new TableCursors();
  /** When scans run: coalesced, within a tenth of the broker's time (scan-pacing.ts). */
  readonly #pacer: ScanPacer;
  #closed = false;
  /** An upgrade's transfer: no scan (nothing is acted on; the next broker carries the entries on). */
  #held = false;
  /** The other broker of an upgrade, while it lives: it holds the device fd as this one does (by pidfd). */
  readonly #brokers: AllowedBrokers;
  /** Cost accounting for `devlease status` and the bench. */
  readonly stats = {
    scans: 0,
    totalUs: 0,
    lastUs: 0,
    processes: 0,
    unreadable: 0,
    /** Of `unreadable`, the last scan's processes read but for threads' own file tables (`partial`). */
    readInPart: 0,
    violations: 0,
    /** Scans that failed (the broker's own shortage: EMFILE, ENOMEM), and the last one's error while no scan has
     * succeeded since (null once one has). */
    scanFailures: 0,
    lastScanError: null as string | null,
  };

  constructor(
    readonly target: FileIdentity,
    readonly config: DirectAuditConfig,
    private readonly host: AuditorHost,
  ) {
    this.#brokers = new AllowedBrokers((line) => host.log(line));
    this.#pacer = new ScanPacer(
      () => this.scan(),
      (err) => host.log(`audit: a scan of /proc failed (${this.stats.scanFailures} so far): ${err.message}`),
    );
  }

  /** Start auditing `id`'s slices (device-file ranges); called at the hand-off. */
  add(id: string, holder: number, ranges: { start: bigint; end: bigint }[]): void {
    const e: Entry = this.#entries.get(id) ?? {
      id,
      holder,
      ranges: [],
      handedAt: null,
      settled: false,
      knownMappers: new Set(),
      violators: new Map(),
      mapped: false,
      waiters: [],
      killPending: false,
    };
    e.ranges.push(...ranges);
    e.handedAt = Date.now();
    e.settled = false;
    this.#entries.set(id, e);
    this.#ensureTimer();
    // The first check comes once the grace has passed even if the client never asks anything again.
    setTimeout(() => this.request(), this.config.handoffGraceMs + 10).unref();
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  /**
   * A control request of lease `id` arrived: scan soon (not on the request's path). `handOffDone`: it is the
   * request the client library sends after closing the handed fd (DEVICE_GET_INFO): from now on a kept fd is a
   * violation. Other requests may have been pipelined before the client even read the hand-off's reply.
   */
  onRequest(id: string, handOffDone = false): void {
    const e = this.#entries.get(id);
    if (!e) return;
    if (handOffDone && e.handedAt !== null) e.settled = true;
    this.request();
  }

  /**
   * A coalesced scan, soon: on the next turn of the event loop, or, when the last scan was recent, once the
   * duty-cycle bound allows (scan-pacing.ts). A failure is logged, not thrown.
   */
  request(): void {
    if (!this.#closed) this.#pacer.request();
  }

  /** One scan: checks, records violations, acts, and wakes release waiters. */
  scan(): ScanResult | null {
    if (this.#closed || this.#held || this.#entries.size === 0) return null;
    const allowed = this.#brokers.alive();
    const t0 = performance.now();
    let r: ScanResult;
    try {
      r = scanProc(this.target, new Set([process.pid, ...allowed]), this.#cursors);
      // Left out by pid, so only while the pid was the broker's: still there at the scan's end, it was all along
      // (it had the pid before the scan began, and a pid is freed only when its process is reaped). Gone
      // meanwhile, its pid may have named another process when the scan read it: scanned again without it.
      // The scan run again reads the same windows of threads' own file tables (nothing moved: the cursors move
      // at commit, once a scan), so the first pass is dropped whole: its holdings carry no start time, and one
      // whose process exited since (its pid taken by another) was recorded, and acted on, against that other.
      if (this.#brokers.alive().length < allowed.length) {
        const again = scanProc(this.target, new Set([process.pid, ...this.#brokers.pids]), this.#cursors);
        r = { ...again, us: r.us + again.us };
      }
      this.#cursors.commit();
    } catch (err) {
      this.#pacer.failed(performance.now() - t0); // paced too
      this.stats.scanFailures++;
      this.stats.lastScanError = `${(err as NodeJS.ErrnoException).code ?? 'Error'}: ${(err as Error).message}`;
      throw err;
    }
    this.stats.lastScanError = null;
    this.stats.scans++;
    this.stats.totalUs += r.us;
    this.stats.lastUs = r.us;
    this.stats.processes = r.processes;
    this.stats.unreadable = r.unreadable;
    this.stats.readInPart = r.partial.length;
    const now = Date.now();
    this.#reported.beginScan(r.windows);
    this.#pacer.scanned(r.us);
    for (const h of r.fds) {
      const holderOf = this.#leaseOf(h.pid);
      const e = holderOf ? this.#entries.get(holderOf) : undefined;
      if (
        e &&
        e.holder === h.pid &&
        !e.settled &&
        e.handedAt !== null &&
        now - e.handedAt < this.config.handoffGraceMs
      )
        continue; // still inside connect(): mapping its slice
      const finding: Finding = e && e.holder === h.pid ? 'fd-kept' : 'fd-passed';
      const table = h.tid === undefined ? '' : ` of thread ${h.tid}'s own file table (unshare(CLONE_FILES))`;
      this.#violate(h.pid, finding, holderOf, `holds the device fd as fd ${h.fd}${table}`);
    }
    for (const pid of r.partial) this.#incomplete(pid, r.unreadTables.includes(pid));
    for (const e of this.#entries.values()) e.mapped = false;
    for (const m of r.maps) this.#checkMapping(m);
    this.#reported.endScan();
    for (const e of this.#entries.values()) if (e.killPending) this.#killMappersOf(e, r.maps);
    for (const e of this.#entries.values()) {
      if (!e.mapped) for (const w of e.waiters.splice(0)) w();
    }
    return r;
  }

  #checkMapping(m: MappingFound): void {
    const end = m.offset + (m.end - m.start);
    let ok = false;
    for (const e of this.#entries.values()) {
      const overlaps = e.ranges.some((r) => m.offset < r.end && end > r.start);
      if (overlaps) e.mapped = true;
      const inside = e.ranges.some((r) => m.offset >= r.start && end <= r.end);
      if (!inside) continue;
      // A holder gone: its children are re-parented, and a mapping of its slice is one they inherited (no
      // other process could map it without an fd, which (a) reports) — even if no scan saw the fork.
      if (e.knownMappers.has(m.pid) || descendsFrom(m.pid, e.holder) || !isRunning(e.holder)) {
        e.knownMappers.add(m.pid);
        ok = true;
      }
    }
    if (ok) return;
    const range = `[0x${m.offset.toString(16)}, 0x${end.toString(16)}) of the device file`;
    this.#violate(m.pid, 'mapping-outside-slice', this.#leaseOf(m.pid), `maps ${range}`);
  }

  /** The audited lease whose holder `pid` is or descends from. */
  #leaseOf(pid: number): string | null {
    for (const e of this.#entries.values()) if (e.holder === pid) return e.id;
    for (const e of this.#entries.values()) if (descendsFrom(pid, e.holder)) return e.id;
    return null;
  }

  /**
   * A lease's process the scan read but for some of its threads' own file tables (file-tables.ts): past the
   * walk's bounds (`rotating`: the next scans read the rest) or a table no scan reads (`unread`). Two keys, each
   * recorded once while it lasts: `incomplete` while the process is read in part (whatever the reason: a rotating
   * process's reason changes with its window, and a key per reason was recorded anew at every change), and
   * `incomplete-unread` once a window holds an unread table. With the first key alone, a first scan whose window
   * missed that table recorded `rotating` ("read over the next scans") for a table never read, and nothing more.
   * `incomplete-unread` is kept through the windows without that table as an fd finding is (report-once.ts).
   * Not acted on: a process of more than 1,024 threads may be an honest one, and nothing was found.
   */
  #incomplete(pid: number, unread: boolean): void {
    const lease = this.#leaseOf(pid);
    if (lease === null) return;
    // Both keys are marked seen (so kept) at every scan that sees them: no short-circuit between them.
    const first = this.#reported.firstSeen(pid, 'incomplete', lease) !== false;
    const firstUnread = unread && this.#reported.firstSeen(pid, 'incomplete-unread', lease) !== false;
    if (unread ? !firstUnread : !first) return;
    const reason = unread ? 'unread' : 'rotating';
    const detail = unread
      ? "a thread's own file table is read by no scan (kcmp refused, or it holds over 4,096 fds)"
      : "more threads' own file tables than one scan reads (1,024 kcmp, 16 tables, 4,096 fds): read over the next scans in turn";
    this.host.audit.write({ event: 'audit-incomplete', pid, ...processFacts(pid), lease, reason, detail });
    this.host.log(`audit: lease ${lease}: pid ${pid}: ${detail}`);
  }

  #violate(pid: number, finding: Finding, lease: string | null, detail: string): void {
    const start = this.#reported.firstSeen(pid, finding, lease);
    if (start === false) return;
    const facts = processFacts(pid);
    const v: Violation = { pid, exe: facts.exe, ppid: facts.ppid, finding, lease, detail };
    this.stats.violations++;
    const e = lease ? this.#entries.get(lease) : undefined;
    e?.violators.set(pid, start);
    // Without a lease to revoke, 'revoke' kills: the process can reach the whole device.
    const action = this.config.action === 'revoke' && !lease ? 'kill' : this.config.action;
    this.host.audit.write({ event: 'audit-violation', ...v, action });
    if (action === 'kill') killRecorded(this.host, pid, `audit: ${finding}`);
    else if (action === 'revoke' && lease)
      this.host.revoke(lease, `audit: pid ${pid} (${facts.exe ?? '?'}) ${finding}: ${detail}`);
  }

  /**
   * A revoke's deadline: every process mapping lease `id`'s slices now, and every violator of the lease, is
   * killed (deadlineAction 'report': only recorded). One scan, synchronous. Reclaim calls this BEFORE it
   * closes the session: a holder that sees the hang-up unmaps its page (the client library's teardown), and
   * a scan after that raced it — the holder still mapping at the deadline lived or died by scheduling.
   */
  killMappers(id: string): void {
    const e = this.#entries.get(id);
    if (!e) return;
    e.killPending = true;
    let scanned: ScanResult | null;
    try {
      scanned = this.scan(); // kills what it finds (killPending); the flag clears once every kill is done
    } catch (err) {
      // Thrown out of here, the failure (readdir of /proc at EMFILE) ended the reclaim half-done. The kill is
      // left to the next scan that succeeds (the periodic one, or the release wait's polls); no waiter is woken
      // before it, so the slices stay out of the pool meanwhile.
      const error = (err as Error).message;
      this.host.log(`audit: lease ${id}: the scan for processes still mapping its slices failed: ${error}`);
      this.host.audit.write({
        event: 'audit-scan-failed',
        lease: id,
        code: (err as NodeJS.ErrnoException).code ?? null,
        error,
        retry: 'the next scan kills the mappers; the slices stay out of the pool until then',
      });
      this.request();
      return;
    }
    // No scan ran (an upgrade's hold, or closed): the violators recorded earlier are all there is to act on now.
    // Held, the flag stays: the first scan after the hold kills whoever maps the slices then (an upgrade rolled
    // back resumes here; one committed runs the reclaim again in the new broker).
    if (scanned === null && e.killPending) {
      this.#killMappersOf(e, []);
      if (this.#held) e.killPending = true;
    }
  }

  /** The flag clears only once every kill is done: one that failed (pidfd_open at EMFILE) is tried again. */
  #killMappersOf(e: Entry, maps: readonly MappingFound[]): void {
    e.killPending = !killMappersOf(this.host, this.config, e, maps);
  }

  /**
   * Resolves when no process maps any of lease `id`'s slices. `forced` (a revoke's deadline, or a violation's
   * revoke): first every process mapping them, and every violator of the lease, is killed (deadlineAction
   * 'report': only recorded). Scans every `pollMs` while waiting.
   */
  async whenUnmapped(id: string, opts: { forced: boolean; pollMs?: number }): Promise<void> {
    const e = this.#entries.get(id);
    if (!e || this.#closed) return;
    if (opts.forced) this.killMappers(id);
    // The scan that decides is a requested one (coalesced, within the duty cycle; held: after unhold()), not
    // one run here: each lease's end ran a whole scan at once, so releases in a burst (or a client leasing and
    // leaving in a loop) cost a scan each, back to back on the event loop, past the audit's tenth of its time.
    const poll = setInterval(() => this.request(), opts.pollMs ?? Math.min(this.config.periodMs, 200));
    try {
      await new Promise<void>((resolve) => {
        e.waiters.push(resolve);
        this.request();
      });
    } finally {
      clearInterval(poll);
    }
  }

  /** Stop auditing a released lease. */
  forget(id: string): void {
    const e = this.#entries.get(id);
    this.#entries.delete(id);
    for (const w of e?.waiters.splice(0) ?? []) w();
    this.#reported.forgetLease(id);
    if (this.#entries.size === 0) this.#pacer.stopPeriodic();
  }

  /**
   * An upgrade: `pid` is the other broker (the new one, seen from the old; the old, seen from the new), which
   * holds the device fd as this one does; no violation while it lives. It must be that process now: its
   * pidfd is taken here (allowed-brokers.ts), and a process given its pid after it is audited.
   */
  allowBroker(pid: number): void {
    this.#brokers.allow(pid);
  }

  /** An upgrade's transfer: scans stop until unhold() (the commit, in the new broker; a rollback, in the old). */
  hold(): void {
    this.#held = true;
  }

  unhold(): void {
    if (!this.#held) return;
    this.#held = false;
    if (this.#entries.size) {
      this.#ensureTimer();
      this.request();
    }
  }

  handover(): AuditorState {
    return { entries: [...this.#entries.values()].map(entryState), reported: this.#reported.keys() };
  }

  /** The previous broker's entries (an upgrade), audited from unhold() on. */
  adopt(state: AuditorState): void {
    for (const h of state.entries) this.#entries.set(h.id, adoptedEntry(h));
    this.#reported.adopt(state.reported);
  }

  #ensureTimer(): void {
    if (!this.#closed) this.#pacer.startPeriodic(this.config.periodMs);
  }

  /** Idempotent: stops the timer, closes the other broker's pidfd; waiters are released (the broker goes). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pacer.stopPeriodic();
    this.#brokers.close();
    for (const e of this.#entries.values()) for (const w of e.waiters.splice(0)) w();
  }
}
