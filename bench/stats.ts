// Summaries of samples: median, p99 and the quantiles the chart draws.
// Percentiles are nearest-rank on the sorted samples (no interpolation), so
// every figure reported is a value that was actually measured.

export interface Quantiles {
  p1: number;
  p10: number;
  p25: number;
  p50: number;
  p75: number;
  p90: number;
  p99: number;
}

export interface Summary {
  n: number;
  median: number;
  p99: number;
  min: number;
  max: number;
  mean: number;
  q: Quantiles;
}

/** Nearest-rank percentile of already sorted samples, p in [0, 1]. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new Error('percentile of no samples');
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)));
  return sorted[rank - 1]!;
}

export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('cannot summarize zero samples');
  const s = [...samples].sort((a, b) => a - b);
  let sum = 0;
  for (const x of s) sum += x;
  const q: Quantiles = {
    p1: percentile(s, 0.01),
    p10: percentile(s, 0.1),
    p25: percentile(s, 0.25),
    p50: percentile(s, 0.5),
    p75: percentile(s, 0.75),
    p90: percentile(s, 0.9),
    p99: percentile(s, 0.99),
  };
  return {
    n: s.length,
    median: q.p50,
    p99: q.p99,
    min: s[0]!,
    max: s[s.length - 1]!,
    mean: sum / s.length,
    q,
  };
}

/** A value with 3 significant digits (no exponent for the ranges we print). */
export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}
