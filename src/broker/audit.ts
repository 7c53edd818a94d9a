// The audit log: one JSON line per grant, denial, revocation and reclaim,
// with the caller's identity and the reason. Written synchronously so that a
// crash right after a decision still leaves its record.
//
// Bounded: repeated denials are collapsed (audit-denials.ts: a burst per uid and code per window, then one
// `suppressed` record with the count), and the two strings a record carries that a client can make long are
// cut (TEXT_CAPS): `exe` is the client's executable, a path it chooses (up to PATH_MAX, 4 KiB), and a reason
// can quote what the client sent.
//
// write() never throws: it runs in the middle of grants and reclaims, and a file that cannot take the line (a
// full disk, EIO) must not leave a lease half granted or a reclaim stopped with its resources held (a client
// can fill a shared file system). The record still reaches `recent`, the sink and the observers (metrics);
// the failure is counted (writeErrors) and reported to onError (the broker logs it, rate-limited).
//
// The file is one O_APPEND descriptor, opened at the first record (again after a failed open) and closed with
// the broker. A write the file takes only part of (a full disk, a file-size limit: ENOSPC, EFBIG) leaves a
// fragment of a line: the next record starts with a newline, so it is not glued onto that fragment and every
// whole record is still a line of its own for a reader.

import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { DENIAL_LIMITS, DenialLimiter, type DenialLimits } from './audit-denials.js';

export interface AuditRecord {
  event: string;
  [key: string]: unknown;
}

const lastByte = Buffer.alloc(1);

/** Whether the file ends in part of a line (a broker before this one stopped mid-record): false if unreadable. */
function endsInPart(path: string): boolean {
  // A read-only open of its own: the log's fd is opened write-only, as a file or folder the broker may append
  // to but not read (mode 0220, an append-only policy) must still take records. Unreadable: taken as whole.
  let fd: number | null = null;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    return size > 0 && readSync(fd, lastByte, 0, 1, size - 1) === 1 && lastByte[0] !== 10;
  } catch {
    return false;
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

/** How many records `recent` keeps. */
export const AUDIT_RECENT = 1000;

/** Bigints (windows, IOVAs) are written as decimal strings. One function for every record, not one per write. */
const bigintAsString = (_k: string, v: unknown): unknown => (typeof v === 'bigint' ? v.toString() : v);

/** The longest `exe` and `reason` a record carries, in UTF-16 units; longer ones are cut, and say so. */
export const TEXT_CAPS: Readonly<Record<string, number>> = { exe: 256, reason: 512 };
/** TEXT_CAPS as a list, made once: write() runs for every record. */
const CAP_LIST = Object.entries(TEXT_CAPS);

/** `s` cut to `max` units (not inside a surrogate pair), with ` [truncated: N chars]` saying it was. */
function capped(s: string, max: number): string {
  if (s.length <= max) return s;
  const code = s.charCodeAt(max - 1);
  const end = code >= 0xd800 && code <= 0xdbff ? max - 1 : max;
  return `${s.slice(0, end)} [truncated: ${s.length} chars]`;
}

export class AuditLog {
  readonly #path: string | null;
  readonly #sink: ((line: string) => void) | null;
  /** The last AUDIT_RECENT records written (not denials suppressed), oldest first: the admin API, tests. */
  readonly recent: AuditRecord[] = [];
  /** Which config decides now (reload.ts): stamped on every grant and denial as `decidedBy`. */
  decidedBy: { readonly config: string; readonly policyModule?: string } | null = null;
  /** Observers of every record (metrics count grants, denials, reclaims from them). */
  readonly #listeners = new Set<(rec: AuditRecord) => void>();
  #fd: number | null = null;
  #closed = false;
  /** The file may end in part of a line (a write it took only part of): the next record starts a new one. */
  #torn = false;

  /** Records the file did not take (appendFileSync failed), and observers that threw, since start. */
  writeErrors = 0;
  /** Told of each failure to write a record or of an observer (the broker: a rate-limited log line). */
  onError: ((what: string, err: unknown) => void) | null = null;

  readonly #denials: DenialLimiter;

  /** `denials`: how repeated denials are collapsed (audit-denials.ts; tests and embedders may pass others). */
  constructor(path: string | null, sink?: (line: string) => void, denials: DenialLimits = DENIAL_LIMITS) {
    this.#path = path;
    this.#sink = sink ?? null;
    this.#denials = new DenialLimiter(denials, (rec) => this.write(rec));
  }

  write(rec: AuditRecord): void {
    const full: AuditRecord = { time: new Date().toISOString(), ...rec };
    for (const [k, max] of CAP_LIST) if (typeof full[k] === 'string') full[k] = capped(full[k], max);
    if (this.decidedBy && (rec.event === 'grant' || rec.event === 'deny'))
      full.decidedBy = { ...this.decidedBy };
    // A denial past its key's burst is only counted (written later as a `suppressed` record's count); the
    // observers still get it, so the metrics count every denial.
    if (this.#denials.admit(full)) this.#output(full);
    for (const l of this.#listeners) {
      try {
        l(full);
      } catch (err) {
        this.#failed('an audit observer threw', err);
      }
    }
  }

  /** The record to `recent`, the file and the sink. */
  #output(full: AuditRecord): void {
    const line = JSON.stringify(full, bigintAsString);
    // shift(), not splice(): a full window drops its oldest record in place (V8 moves the array's start)
    // instead of copying the other 999 and allocating the removed one's array, on every record once a
    // broker has written 1,000 (~3 µs a record, three records a lease).
    this.recent.push(full);
    while (this.recent.length > AUDIT_RECENT) this.recent.shift();
    if (this.#path) {
      try {
        this.#append(this.#path, line);
      } catch (err) {
        this.#failed(`cannot append to ${this.#path}`, err);
      }
    }
    try {
      this.#sink?.(line);
    } catch (err) {
      this.#failed('the audit sink threw', err);
    }
  }

  /** Write the counts of the denials suppressed so far, ending their windows (before the broker goes). */
  flushDenials(): void {
    this.#denials.flush();
  }

  #append(path: string, line: string): void {
    // After close() (a record written on the way out) the file is opened for that record alone.
    let fd = this.#fd;
    if (fd === null) {
      fd = openSync(path, 'a'); // O_APPEND, write-only: as appendFileSync opened it
      // Of this file: a rotation's fresh file starts whole, whatever the renamed one ended in.
      this.#torn = endsInPart(path);
      if (!this.#closed) this.#fd = fd;
    }
    const buf = Buffer.from(`${this.#torn ? '\n' : ''}${line}\n`);
    let done = 0;
    try {
      while (done < buf.length) done += writeSync(fd, buf, done);
      this.#torn = false;
    } catch (err) {
      if (done > 0) this.#torn = true; // part of this record went in; a failure before any keeps the state
      throw err;
    } finally {
      if (this.#closed) closeSync(fd);
    }
  }

  /**
   * The next record opens the path anew (`devlease reload`, SIGHUP: after a rotation renamed the file). Never
   * throws: a close's deferred error (NFS) is reported as a write error, and the number is released anyway.
   */
  reopen(): void {
    const fd = this.#fd;
    this.#fd = null;
    if (fd === null) return;
    try {
      closeSync(fd);
    } catch (err) {
      this.#failed('closing the audit file to reopen it failed', err);
    }
  }

  /**
   * Close the file (the broker's close), after writing the counts of suppressed denials. Idempotent; a record
   * written after it opens the file for itself.
   */
  close(): void {
    if (this.#closed) return;
    this.flushDenials();
    this.#closed = true;
    const fd = this.#fd;
    this.#fd = null;
    if (fd !== null) closeSync(fd);
  }

  #failed(what: string, err: unknown): void {
    this.writeErrors++;
    try {
      this.onError?.(what, err);
    } catch {
      // the report's own failure has nowhere else to go
    }
  }

  /** Calls `fn` with every record written from now on; returns the unsubscribe function. */
  subscribe(fn: (rec: AuditRecord) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }
}
