// The audit log: one JSON line per grant, denial, revocation and reclaim,
// with the caller's identity and the reason. Written synchronously so that a
// crash right after a decision still leaves its record.

import { appendFileSync } from 'node:fs';

export interface AuditRecord {
  event: string;
  [key: string]: unknown;
}

/** How many records `recent` keeps. */
export const AUDIT_RECENT = 1000;

/** Bigints (windows, IOVAs) are written as decimal strings. One function for every record, not one per write. */
const bigintAsString = (_k: string, v: unknown): unknown => (typeof v === 'bigint' ? v.toString() : v);

export class AuditLog {
  readonly #path: string | null;
  readonly #sink: ((line: string) => void) | null;
  /** The last AUDIT_RECENT records, oldest first, for the admin API and tests. */
  readonly recent: AuditRecord[] = [];
  /** Which config decides now (reload.ts): stamped on every grant and denial as `decidedBy`. */
  decidedBy: { readonly config: string; readonly policyModule?: string } | null = null;
  /** Observers of every record (metrics count grants, denials, reclaims from them). */
  readonly #listeners = new Set<(rec: AuditRecord) => void>();

  constructor(path: string | null, sink?: (line: string) => void) {
    this.#path = path;
    this.#sink = sink ?? null;
  }

  write(rec: AuditRecord): void {
    const full: AuditRecord = { time: new Date().toISOString(), ...rec };
    if (this.decidedBy && (rec.event === 'grant' || rec.event === 'deny'))
      full.decidedBy = { ...this.decidedBy };
    const line = JSON.stringify(full, bigintAsString);
    // shift(), not splice(): a full window drops its oldest record in place (V8 moves the array's start)
    // instead of copying the other 999 and allocating the removed one's array, on every record once a
    // broker has written 1,000 (~3 µs a record, three records a lease).
    this.recent.push(full);
    while (this.recent.length > AUDIT_RECENT) this.recent.shift();
    if (this.#path) appendFileSync(this.#path, `${line}\n`);
    this.#sink?.(line);
    for (const l of this.#listeners) l(full);
  }

  /** Calls `fn` with every record written from now on; returns the unsubscribe function. */
  subscribe(fn: (rec: AuditRecord) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }
}
