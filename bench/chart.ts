// The benchmark chart, hand-written SVG: (1) each comparison's ratio to its
// floor or baseline, as bars on a log scale; (2) every latency distribution
// (p1–p99 whiskers, p25–p75 box, median tick) on one log time axis.

import { type CaseResult, toMicros } from './fixtures/result.js';
import { fmt } from './stats.js';

const W = 1100;
const LABEL_W = 470;
const PLOT_X = LABEL_W + 10;
const PLOT_W = W - PLOT_X - 90;
const ROW = 18;
const COLORS = { floor: '#8a8a8a', baseline: '#3b78c2', subject: '#e07b24' } as const;

const esc = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const text = (x: number, y: number, s: string, attrs = ''): string =>
  `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`;

/** Log-scale x position for a value in [lo, hi] (decades). */
function logX(v: number, lo: number, hi: number): number {
  const c = Math.min(Math.max(v, lo), hi);
  return PLOT_X + ((Math.log10(c) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * PLOT_W;
}

function decades(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
  return out;
}

function axis(y0: number, y1: number, lo: number, hi: number, label: (v: number) => string): string[] {
  return decades(lo, hi).flatMap((v) => {
    const x = logX(v, lo, hi);
    return [
      `<line x1="${x.toFixed(1)}" y1="${y0}" x2="${x.toFixed(1)}" y2="${y1}" stroke="#ddd"/>`,
      text(x, y1 + 12, label(v), 'text-anchor="middle" fill="#555"'),
    ];
  });
}

const timeLabel = (us: number): string =>
  us >= 1e6 ? `${us / 1e6} s` : us >= 1e3 ? `${us / 1e3} ms` : us >= 1 ? `${us} µs` : `${us * 1e3} ns`;

/**
 * Bounds in whole decades around the positive, finite values (at least one decade wide). A log axis has no
 * place for 0 — an idle row can measure 0.00 % and its ratio 0× — so such values sit at its left end
 * (logX clamps); with them in, log10(0) = -Infinity sent the decade loop on for ever (V8 "invalid size").
 */
function bounds(values: number[]): [number, number] {
  const shown = values.filter((v) => v > 0 && Number.isFinite(v));
  if (!shown.length) return [1, 10];
  const lo = 10 ** Math.floor(Math.log10(Math.min(...shown)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...shown)));
  return [lo, hi > lo ? hi : lo * 10];
}

function ratioPanel(cases: CaseResult[], y: number): { svg: string[]; height: number } {
  // Breakdown rows (labels starting with '·') stay in the table and the distributions, not here.
  const rows = cases.flatMap((c) =>
    c.metrics.filter((m) => m.ratio !== undefined && !m.label.startsWith('·')).map((m) => ({ c, m })),
  );
  const svg: string[] = [
    text(10, y + 14, 'Ratio of medians to the floor or baseline (log scale)', 'font-weight="bold"'),
  ];
  if (!rows.length) return { svg, height: 30 };
  const [lo, hi] = bounds([...rows.map((r) => r.m.ratio!), 1]);
  const top = y + 26;
  const bottom = top + rows.length * ROW;
  svg.push(...axis(top, bottom, lo, hi, (v) => `${v}×`));
  const one = logX(1, lo, hi);
  rows.forEach(({ c, m }, i) => {
    const ry = top + i * ROW;
    const x = logX(m.ratio!, lo, hi);
    const ref = c.metrics.find((r) => r.id === m.ref)!;
    svg.push(
      text(LABEL_W, ry + 13, `${c.case}: ${m.label}`, 'text-anchor="end"'),
      `<rect x="${Math.min(one, x).toFixed(1)}" y="${ry + 3}" width="${Math.max(1, Math.abs(x - one)).toFixed(1)}" height="${ROW - 6}" fill="${COLORS[m.role]}"><title>${esc(`${m.label} / ${ref.label}`)}</title></rect>`,
      text(
        Math.max(one, x) + 4,
        ry + 13,
        `${fmt(m.ratio!)}× ${ref.role === 'subject' ? ref.id : ref.role}`,
        'fill="#333"',
      ),
    );
  });
  svg.push(`<line x1="${one.toFixed(1)}" y1="${top}" x2="${one.toFixed(1)}" y2="${bottom}" stroke="#000"/>`);
  return { svg, height: bottom - y + 24 };
}

function distPanel(cases: CaseResult[], y: number): { svg: string[]; height: number } {
  const rows = cases.flatMap((c) =>
    c.metrics
      .filter((m) => m.n > 1 && toMicros(1, m.unit) !== null)
      .map((m) => ({ c, m, k: toMicros(1, m.unit)! })),
  );
  const svg: string[] = [
    text(
      10,
      y + 14,
      'Latency distributions: whiskers p1–p99, box p25–p75, tick = median (log scale)',
      'font-weight="bold"',
    ),
  ];
  if (!rows.length) return { svg, height: 30 };
  const [lo, hi] = bounds(rows.flatMap(({ m, k }) => [m.q.p1 * k, m.q.p99 * k]));
  const top = y + 26;
  const bottom = top + rows.length * ROW;
  svg.push(...axis(top, bottom, lo, hi, timeLabel));
  rows.forEach(({ c, m, k }, i) => {
    const ry = top + i * ROW;
    const mid = ry + ROW / 2;
    const X = (v: number) => logX(v * k, lo, hi).toFixed(1);
    const q = m.q;
    svg.push(
      text(LABEL_W, ry + 13, `${c.case}: ${m.label}`, 'text-anchor="end"'),
      `<line x1="${X(q.p1)}" y1="${mid}" x2="${X(q.p99)}" y2="${mid}" stroke="${COLORS[m.role]}"/>`,
      `<rect x="${X(q.p25)}" y="${ry + 4}" width="${Math.max(1, logX(q.p75 * k, lo, hi) - logX(q.p25 * k, lo, hi)).toFixed(1)}" height="${ROW - 8}" fill="${COLORS[m.role]}" fill-opacity="0.5" stroke="${COLORS[m.role]}"><title>${esc(`${m.label}: median ${fmt(m.median)} ${m.unit}, p99 ${fmt(m.p99)} ${m.unit}, n ${m.n}`)}</title></rect>`,
      `<line x1="${X(q.p50)}" y1="${ry + 2}" x2="${X(q.p50)}" y2="${ry + ROW - 2}" stroke="#000" stroke-width="2"/>`,
      text(logX(q.p99 * k, lo, hi) + 4, ry + 13, `${fmt(m.median)} ${m.unit}`, 'fill="#333"'),
    );
  });
  return { svg, height: bottom - y + 24 };
}

export function renderChart(cases: CaseResult[], subtitle: string): string {
  const head = [
    text(10, 20, 'devlease benchmarks', 'font-weight="bold" font-size="15"'),
    text(10, 38, subtitle, 'fill="#555"'),
    ...(['floor', 'baseline', 'subject'] as const).map(
      (r, i) =>
        `<rect x="${W - 300 + i * 95}" y="10" width="10" height="10" fill="${COLORS[r]}"/>` +
        text(W - 286 + i * 95, 19, r === 'subject' ? 'devlease' : r),
    ),
  ];
  const ratios = ratioPanel(cases, 50);
  const dists = distPanel(cases, 50 + ratios.height + 10);
  const height = 50 + ratios.height + 10 + dists.height;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif" font-size="11">`,
    '<title>devlease benchmarks: ratios to the floors and latency distributions</title>',
    `<rect width="${W}" height="${height}" fill="#fff"/>`,
    ...head,
    ...ratios.svg,
    ...dists.svg,
    '</svg>',
    '',
  ].join('\n');
}
