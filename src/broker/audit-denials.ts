// Denials in the audit log, collapsed per key. A refused client can ask again at once, and the lease socket is
// 0666 by default: any local user looping refused connections (8 loops: ~27,000 `deny` records in 10 s, some
// 700 KiB/s) or, holding a lease, DMA_MAPs past its `max_mappings` wrote a record for each, without limit.
//
// Per key (the event, the uid, the errno code), the first `burst` denials of a window are written as they come;
// the rest are counted, and when the window ends one `suppressed` record says how many. A window starts at its
// key's first denial. Keys are bounded too: past `keys` of them, denials of a new key share one key per event
// (uid and code null). So a window writes at most (keys + 2) × (burst + 1) denial records, whoever asks.
//
// Only the written records go to the file, the sink and `recent`; every denial, written or not, still reaches
// the audit log's observers, so the metrics (devlease_denials_total) count each one.

import type { AuditRecord } from './audit.js';

export interface DenialLimits {
  /** Denials of one key written in full per window. */
  burst: number;
  /** A key's window, from its first denial, in ms. */
  windowMs: number;
  /** Keys counted at once; a denial of any other key is counted under its event's shared key. */
  keys: number;
}

export const DENIAL_LIMITS: Readonly<DenialLimits> = { burst: 10, windowMs: 10_000, keys: 256 };

/** The audit events that are denials. Grants, reclaims and every other record are always written. */
const DENIALS = new Set(['deny', 'deny-map']);

interface Window {
  of: string;
  uid: unknown;
  code: unknown;
  since: number;
  written: number;
  suppressed: number;
  /** The reason of the last denial counted and not written (the key does not include the reason). */
  lastReason: unknown;
  timer: NodeJS.Timeout;
}

export class DenialLimiter {
  readonly #limits: DenialLimits;
  /** Writes a `suppressed` record (AuditLog.write: never throws). */
  readonly #emit: (rec: AuditRecord) => void;
  readonly #windows = new Map<string, Window>();

  constructor(limits: DenialLimits, emit: (rec: AuditRecord) => void) {
    this.#limits = limits;
    this.#emit = emit;
  }

  /** Whether `rec` is to be written: it is no denial, or one within its key's burst. Counts it if not. */
  admit(rec: AuditRecord): boolean {
    if (!DENIALS.has(rec.event)) return true;
    const uid = rec.uid ?? null;
    const code = rec.code ?? null;
    let key = `${rec.event}\0${uid}\0${code}`;
    let w = this.#windows.get(key);
    const shared = !w && this.#windows.size >= this.#limits.keys;
    if (shared) {
      key = `${rec.event}\0*`;
      w = this.#windows.get(key);
    }
    if (!w) {
      // The timer is unref'd: a broker that stops without close() (a crash) loses at most a window's counts.
      const timer = setTimeout(() => this.#end(key), this.#limits.windowMs);
      timer.unref();
      w = {
        of: rec.event,
        uid: shared ? null : uid,
        code: shared ? null : code,
        since: Date.now(),
        written: 0,
        suppressed: 0,
        lastReason: null,
        timer,
      };
      this.#windows.set(key, w);
    }
    if (w.written < this.#limits.burst) {
      w.written++;
      return true;
    }
    w.suppressed++;
    w.lastReason = rec.reason ?? null;
    return false;
  }

  /** End every window now, writing what each suppressed (the broker's close, an upgrade's hand-over). */
  flush(): void {
    for (const key of [...this.#windows.keys()]) this.#end(key);
  }

  #end(key: string): void {
    const w = this.#windows.get(key);
    if (!w) return;
    clearTimeout(w.timer);
    this.#windows.delete(key);
    if (w.suppressed === 0) return;
    this.#emit({
      event: 'suppressed',
      of: w.of,
      uid: w.uid,
      code: w.code,
      suppressed: w.suppressed,
      since: new Date(w.since).toISOString(),
      lastReason: w.lastReason,
    });
  }
}
