// An audited lease's entry in the auditor (auditor.ts), and its form across a broker upgrade (AuditorState,
// handover/format.ts): here so that the auditor holds the scans' logic alone.

import type { AuditorState } from './audit-types.js';
import { startTimeOf } from './process-facts.js';

/** Device-file offset ranges [start, end) of one lease's audited slices. */
export interface Entry {
  id: string;
  holder: number;
  ranges: { start: bigint; end: bigint }[];
  handedAt: number | null;
  /** The holder made a request after the hand-off: its connect() has returned, so the fd must be closed. */
  settled: boolean;
  knownMappers: Set<number>;
  /**
   * Violating processes attributed to this lease (killed with it on a forced reclaim): pid → its start time
   * (process-facts.ts: startTimeOf), so that a pid another process has taken since is not killed for it.
   */
  violators: Map<number, string | null>;
  mapped: boolean;
  waiters: (() => void)[];
  /**
   * A revoke's deadline passed but its scan failed (killMappers): the next scan that succeeds kills the mappers
   * it finds. Until then no scan succeeded, so no waiter was woken: the slices stay out of the pool.
   */
  killPending: boolean;
}

type EntryState = AuditorState['entries'][number];

/** What an upgrade carries of an entry: violators by pid (their start times are read again by the next broker). */
export function entryState(e: Entry): EntryState {
  return {
    id: e.id,
    holder: e.holder,
    ranges: e.ranges.map((r) => ({ start: r.start.toString(), end: r.end.toString() })),
    handedAt: e.handedAt,
    settled: e.settled,
    knownMappers: [...e.knownMappers],
    violators: [...e.violators.keys()],
  };
}

/** The previous broker's entry, audited from the next scan on. */
export function adoptedEntry(h: EntryState): Entry {
  return {
    id: h.id,
    holder: h.holder,
    ranges: h.ranges.map((r) => ({ start: BigInt(r.start), end: BigInt(r.end) })),
    handedAt: h.handedAt,
    settled: h.settled,
    knownMappers: new Set(h.knownMappers),
    // Their start times now: the processes the old broker recorded, unless gone (and their pid taken) since.
    violators: new Map(h.violators.map((pid) => [pid, startTimeOf(pid)])),
    mapped: true, // until a scan says otherwise
    waiters: [],
    killPending: false, // not carried across an upgrade
  };
}
