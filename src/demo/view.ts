// The demo's live view: one row per client, redrawn in place on a TTY, or a
// plain status line per second for logs (--no-tty).

export interface ClientRow {
  slot: number;
  pid: number;
  lease: string;
  queue: number | null;
  state: string;
  ops: number;
  bytes: number;
  verifiedBytes: number;
  mismatches: number;
  p50us: number;
  p99us: number;
  startedAt: number;
  endedAt: number | null;
}

const fmt = {
  rate(n: number, s: number) {
    return s > 0 ? (n / s).toFixed(0) : '0';
  },
  gbps(bytes: number, s: number) {
    return s > 0 ? (bytes / s / 1e9).toFixed(3) : '0.000';
  },
  us(v: number) {
    return v ? v.toFixed(1) : '-';
  },
};

function secs(r: ClientRow): number {
  return ((r.endedAt ?? Date.now()) - r.startedAt) / 1000;
}

export function rowCells(r: ClientRow): string[] {
  const s = secs(r);
  return [
    String(r.slot),
    String(r.pid),
    r.lease || '-',
    r.queue === null ? '-' : String(r.queue),
    r.state,
    fmt.rate(r.ops, s),
    fmt.gbps(r.bytes, s),
    fmt.us(r.p50us),
    fmt.us(r.p99us),
    (r.verifiedBytes / 1e6).toFixed(1),
    String(r.mismatches),
  ];
}

export const HEAD = [
  '#',
  'PID',
  'LEASE',
  'Q',
  'STATE',
  'OPS/S',
  'GB/S',
  'P50 µs',
  'P99 µs',
  'VERIFIED MB',
  'BAD',
];

export function renderTable(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => c.padStart(w[i] ?? 0)).join('  ');
  return [line(head), ...rows.map(line)].join('\n');
}

export class LiveView {
  readonly #tty: boolean;
  #drawnLines = 0;
  readonly #events: string[] = [];
  readonly #t0 = Date.now();

  readonly #out: NodeJS.WritableStream;

  /** `out`: where the view goes; stderr under `devlease demo --json`, whose stdout is the summary alone. */
  constructor(tty: boolean, out: NodeJS.WritableStream = process.stdout) {
    this.#tty = tty;
    this.#out = out;
  }

  #closed = false;

  /** Stop drawing (the summary follows). */
  close(): void {
    this.#closed = true;
  }

  /** A notable event (revoke, kill, reclaim, re-lease): printed once, kept on screen. */
  event(text: string): void {
    if (this.#closed) return;
    const line = `[${((Date.now() - this.#t0) / 1000).toFixed(2).padStart(6)}s] ${text}`;
    if (this.#tty) {
      this.#events.push(line);
      if (this.#events.length > 8) this.#events.shift();
    } else this.#out.write(`${line}\n`);
  }

  draw(rows: ClientRow[], footer: string): void {
    if (this.#closed) return;
    const table = renderTable(HEAD, rows.map(rowCells));
    if (!this.#tty) {
      const live = rows.filter((r) => r.state === 'running');
      const ops = live.reduce((n, r) => n + r.ops / Math.max(secs(r), 1e-3), 0);
      this.#out.write(`${footer}  clients=${live.length} total-ops/s=${ops.toFixed(0)}\n`);
      return;
    }
    const text = `${table}\n\n${this.#events.join('\n')}\n${footer}\n`;
    if (this.#drawnLines) this.#out.write(`\x1b[${this.#drawnLines}F\x1b[J`);
    this.#out.write(text);
    this.#drawnLines = text.split('\n').length - 1;
  }
}
