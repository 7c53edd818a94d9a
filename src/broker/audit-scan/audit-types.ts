// The audit's configuration, findings and the shapes it shares with the broker (its host) and an upgrade
// (handover/format.ts): auditor.ts is the auditor itself.

import type { AuditLog } from '../audit.js';

export type AuditAction = 'report' | 'revoke' | 'kill';

export interface DirectAuditConfig {
  /** What a violation does beyond its record: nothing, revoke its lease at once, or SIGKILL the process. */
  action: AuditAction;
  /** Period of the background scan while audited slices exist. */
  periodMs: number;
  /** How long the holder may keep the handed fd before its first request after the hand-off says it closed it. */
  handoffGraceMs: number;
  /** At a revoke's deadline: SIGKILL every process still mapping the slice ('kill') or only record them. */
  deadlineAction: 'kill' | 'report';
}

export const DEFAULT_DIRECT_AUDIT: DirectAuditConfig = {
  action: 'revoke',
  periodMs: 1000,
  handoffGraceMs: 2000,
  deadlineAction: 'kill',
};

export type Finding = 'fd-kept' | 'fd-passed' | 'mapping-outside-slice';

export interface Violation {
  pid: number;
  exe: string | null;
  ppid: number | null;
  finding: Finding;
  /** The lease the process belongs to (by holder ancestry), or null. */
  lease: string | null;
  detail: string;
}

/** What an upgrade carries of the audit (handover/format.ts): each audited lease's entry, and what was reported. */
export interface AuditorState {
  entries: {
    id: string;
    holder: number;
    /** Device-file offsets, decimal strings. */
    ranges: { start: string; end: string }[];
    handedAt: number | null;
    settled: boolean;
    knownMappers: number[];
    violators: number[];
  }[];
  reported: string[];
}

export interface AuditorHost {
  audit: AuditLog;
  /** Take the lease back at once (action 'revoke'). */
  revoke(leaseId: string, reason: string): void;
  log(line: string): void;
}
