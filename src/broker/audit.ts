// The audit log: one JSON line per grant, denial, revocation and reclaim,
// with the caller's identity and the reason. Written synchronously so that a
// crash right after a decision still leaves its record.

import { appendFileSync } from 'node:fs';

export interface AuditRecord {
  event: string;
  [key: string]: unknown;
}

export class AuditLog {
  readonly #path: string | null;
  readonly #sink: ((line: string) => void) | null;
  /** The last records, for the admin API and tests. */
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
    const decided = this.decidedBy && (rec.event === 'grant' || rec.event === 'deny');
    const full = {
      time: new Date().toISOString(),
      ...rec,
      ...(decided ? { decidedBy: { ...this.decidedBy } } : {}),
    };
    const line = JSON.stringify(full, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
    this.recent.push(full);
    if (this.recent.length > 1000) this.recent.splice(0, this.recent.length - 1000);
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
