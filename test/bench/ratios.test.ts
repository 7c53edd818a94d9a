// A comparison against a reference measured as 0 (the idle case's CPU floor
// within one clock tick) has no ratio, and the chart still renders: an
// Infinity ratio once sent the chart's decade axis to infinity and crashed
// `devlease bench` (V8 "invalid size") at the end of CI's smoke run; a subject
// measured as 0 (a ratio of 0×, its p1 and p99 0) once did the same.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderChart } from '../../bench/chart.js';
import { metric, withRatios } from '../../bench/fixtures/result.js';

test('a zero reference gives no ratio; the chart renders with it', () => {
  const metrics = withRatios([
    metric('floor', 'no queue', '%', [0, 0], { role: 'floor' }),
    metric('idle', 'idle lease', '%', [2, 3], { ref: 'floor' }),
    metric('base', 'baseline', 'µs', [10, 10], { role: 'baseline' }),
    metric('subj', 'subject', 'µs', [20, 20], { ref: 'base' }),
  ]);
  assert.equal(metrics[1]!.ratio, undefined);
  assert.equal(metrics[3]!.ratio, 2);
  const svg = renderChart(
    [{ case: 'idle', title: 'idle', quick: true, metrics, notes: {}, wallMs: 1 }],
    'test',
  );
  assert.match(svg, /^<svg/);
});

test('a subject measured as 0 (ratio 0×) renders: a log axis leaves it at its left end', () => {
  const metrics = withRatios([
    metric('none', 'no queue', '%', [1, 1], { role: 'floor' }),
    metric('kick', 'idle lease holding its kick fd', '%', [0, 0], { ref: 'none' }),
  ]);
  assert.equal(metrics[1]!.ratio, 0);
  const svg = renderChart(
    [{ case: 'idle', title: 'idle', quick: true, metrics, notes: {}, wallMs: 1 }],
    'test',
  );
  assert.match(svg, /^<svg/);
  assert.match(svg, /idle lease holding its kick fd/);
});
