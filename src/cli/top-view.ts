// `devlease top`'s screen as lines of text, from two snapshots of the broker (the admin "top" op): rates
// are the counters' change over the time between them. Pure: the same lines are drawn full-screen on a
// terminal and printed as they are when stdout is not one.

export interface TopLease {
  id: string;
  kind: string;
  state: string;
  pid: number;
  uid: number;
  exe: string | null;
  queue: number | null;
  deadline: number | null;
  since: string;
  completed: string | null;
  bytes: string | null;
}

export interface TopSnap {
  time: number;
  device: string;
  driver: string;
  connection: { state: string; lastError?: string | null };
  recovery: { state: string; cause?: string | null };
  suspended: string | null;
  draining: boolean;
  heartbeatAgeSeconds: number | null;
  leases: TopLease[];
  /** Leases whose counters the broker's read did not get in time, and why (absent from an older broker). */
  countersUnavailable?: { leases: string[]; code: string; error: string } | null;
  audit: { time: string; event: string; [k: string]: unknown }[];
}

export const SORT_KEYS = ['lease', 'pid', 'state', 'ops', 'bytes'] as const;
export type SortKey = (typeof SORT_KEYS)[number];

interface Row {
  lease: TopLease;
  ops: number | null;
  bytesPerS: number | null;
}

/** Per-lease rates between `prev` and `cur` (null for a lease new since prev, or without counters). */
function rows(prev: TopSnap | null, cur: TopSnap): Row[] {
  const before = new Map(prev?.leases.map((l) => [l.id, l]) ?? []);
  const dt = prev ? (cur.time - prev.time) / 1000 : 0;
  return cur.leases.map((l) => {
    const p = before.get(l.id);
    if (!p || dt <= 0 || l.completed === null || p.completed === null || l.bytes === null || p.bytes === null)
      return { lease: l, ops: null, bytesPerS: null };
    return {
      lease: l,
      ops: Number(BigInt(l.completed) - BigInt(p.completed)) / dt,
      bytesPerS: Number(BigInt(l.bytes) - BigInt(p.bytes)) / dt,
    };
  });
}

function compare(key: SortKey): (a: Row, b: Row) => number {
  const num = (v: number | null) => v ?? -1;
  switch (key) {
    case 'pid':
      return (a, b) => a.lease.pid - b.lease.pid;
    case 'state':
      return (a, b) => a.lease.state.localeCompare(b.lease.state);
    case 'ops':
      return (a, b) => num(b.ops) - num(a.ops);
    case 'bytes':
      return (a, b) => num(b.bytesPerS) - num(a.bytesPerS);
    default:
      // queue-2 before queue-10
      return (a, b) => a.lease.id.localeCompare(b.lease.id, 'en', { numeric: true });
  }
}

function human(n: number | null, unit = ''): string {
  if (n === null) return '-';
  const units = ['', 'k', 'M', 'G', 'T'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)}${units[i]}${unit}`;
}

function deadline(d: number | null, now: number): string {
  if (d === null) return '-';
  const s = (d - now) / 1000;
  return s <= 0 ? 'due' : `in ${s.toFixed(1)}s`;
}

function table(head: string[], body: string[][]): string[] {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(w[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(head), ...body.map(line)];
}

function auditLine(r: TopSnap['audit'][number]): string {
  const { time, event, ...rest } = r;
  const bits = ['lease', 'pid', 'kind', 'reason', 'cause', 'code']
    .filter((k) => rest[k] !== undefined && rest[k] !== null)
    .map((k) => `${k}=${typeof rest[k] === 'string' ? rest[k] : JSON.stringify(rest[k])}`);
  return `${String(time).slice(11, 23)}  ${event.padEnd(16)} ${bits.join(' ')}`;
}

/** The screen: header, health, the lease table, the latest audit events (as many as fit in `height`). */
export function renderTop(
  prev: TopSnap | null,
  cur: TopSnap,
  sort: SortKey,
  reverse = false,
  width = Number.POSITIVE_INFINITY,
  height = Number.POSITIVE_INFINITY,
): string[] {
  const r = rows(prev, cur).sort(compare(sort));
  if (reverse) r.reverse();
  const totalOps = r.reduce((n, x) => n + (x.ops ?? 0), 0);
  const totalBytes = r.reduce((n, x) => n + (x.bytesPerS ?? 0), 0);
  const grants = cur.suspended ? `suspended (${cur.suspended})` : cur.draining ? 'draining' : 'open';
  const out = [
    `devlease top — device ${cur.device} (${cur.driver})  ${new Date(cur.time).toISOString().slice(11, 19)}  ` +
      `sort: ${sort}${reverse ? ' (reversed)' : ''}  [s] sort  [r] reverse  [q] quit`,
    `device: ${cur.connection.state}  recovery: ${cur.recovery.state}  heartbeat age: ${
      cur.heartbeatAgeSeconds === null ? '-' : `${cur.heartbeatAgeSeconds.toFixed(1)}s`
    }  grants: ${grants}`,
    `leases: ${cur.leases.length}  ops/s: ${human(totalOps)}  bytes/s: ${human(totalBytes, 'B')}`,
    // Their rows show '-': said here why, rather than read as idle.
    ...(cur.countersUnavailable
      ? [
          `counters unavailable for ${cur.countersUnavailable.leases.length} lease(s): ${cur.countersUnavailable.error} (${cur.countersUnavailable.code})`,
        ]
      : []),
    '',
    ...table(
      ['LEASE', 'STATE', 'PID', 'EXE', 'QUEUE', 'OPS/S', 'BYTES/S', 'DEADLINE'],
      r.map((x) => [
        x.lease.id,
        x.lease.state,
        String(x.lease.pid),
        x.lease.exe ?? '?',
        x.lease.queue === null ? '-' : String(x.lease.queue),
        human(x.ops),
        human(x.bytesPerS, 'B'),
        deadline(x.lease.deadline, cur.time),
      ]),
    ),
    '',
    'RECENT EVENTS',
  ];
  const room = Math.max(0, height - out.length);
  const events = cur.audit.slice(-Math.min(room, cur.audit.length)).reverse().map(auditLine);
  return [...out, ...(room > 0 ? events : [])].map((l) => (l.length > width ? l.slice(0, width) : l));
}
