// `devlease bench` / `npm run bench`: runs each case (bench/cases/*) in a
// fresh process, prints a table, writes bench/results/<timestamp>.json and
// an SVG chart next to it. Exits 1 if any case failed to run (the numbers
// themselves are never judged).
//
//   devlease bench [--quick] [--only case,case] [--out DIR] [--svg PATH]

import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { childEnv } from '../src/util/exit-with-parent.js';
import { makeDirs } from '../src/util/make-dirs.js';
import { renderChart } from './chart.js';
import type { CaseResult, Metric } from './fixtures/result.js';
import { fmt } from './stats.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/bench
const ROOT = resolve(here, '..', '..');

export const CASES = [
  'hot-path',
  'clib-hot-path',
  'lease-acquire',
  'acquire-patterns',
  'region-read',
  'slice-access',
  'dma-map',
  'dma-relay',
  'reclaim',
  'revoke',
  'copy',
  'scale',
  'idle',
  'upgrade',
];

const USAGE = `usage: devlease bench [--quick] [--only CASE,...] [--out DIR] [--svg PATH]
  --quick        fewer samples (the CI smoke run, < 60 s)
  --only         run only these cases (${CASES.join(', ')})
  --out DIR      where <timestamp>.json and .svg go (default bench/results)
  --svg PATH     also write the chart here (e.g. docs/performance.svg)`;

interface Options {
  quick: boolean;
  only: string[];
  out: string;
  svg: string | null;
}

function parseArgs(argv: string[]): Options | string {
  const o: Options = { quick: false, only: CASES, out: join(ROOT, 'bench', 'results'), svg: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    try {
      if (a === '--quick') o.quick = true;
      else if (a === '--only') o.only = value().split(',');
      else if (a === '--out') o.out = resolve(value());
      else if (a === '--svg') o.svg = resolve(value());
      else if (a === '--help' || a === '-h') return USAGE;
      else return `devlease bench: unknown option ${a}\n${USAGE}`;
    } catch (err) {
      return `devlease bench: ${(err as Error).message}\n${USAGE}`;
    }
  }
  const unknown = o.only.filter((c) => !CASES.includes(c));
  if (unknown.length) return `devlease bench: unknown case ${unknown.join(', ')}\n${USAGE}`;
  // Where the results go, checked before the cases run (a full run takes many minutes): a folder that could
  // not be made, or a --svg that could not be written, failed only at the end, with a stack, the run lost.
  try {
    makeDirs(o.out);
    accessSync(o.out, constants.W_OK);
  } catch (err) {
    return `devlease bench: --out ${o.out}: ${(err as NodeJS.ErrnoException).code ?? err}`;
  }
  if (o.svg) {
    try {
      if (statSync(dirname(o.svg)).isDirectory()) accessSync(dirname(o.svg), constants.W_OK);
      else return `devlease bench: --svg ${o.svg}: ${dirname(o.svg)} is not a folder`;
      if (statSync(o.svg, { throwIfNoEntry: false })?.isDirectory())
        return `devlease bench: --svg ${o.svg}: a folder`;
    } catch (err) {
      return `devlease bench: --svg ${o.svg}: ${(err as NodeJS.ErrnoException).code ?? err}`;
    }
  }
  return o;
}

/** A sysfs value, trimmed; null where the file is absent or unreadable (another kernel, no cpuidle). */
function sysfs(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** How this machine's idle CPUs wait (cpuIdle()). */
export interface CpuIdle {
  driver: string | null;
  governor: string | null;
  /** The haltpoll governor's longest poll window, ns; null unless that governor is the one in use. */
  haltPollNs: number | null;
}

/**
 * How an idle CPU waits: the cpuidle driver and governor and, under the haltpoll governor (a KVM guest's), the
 * longest a vCPU may poll before it halts. Every control-path row is made of wake-ups, and waking a halted vCPU
 * is much of what they cost on a VM (docs/performance-history.md, "Issue 16, fourteenth pass" §3): a run is read with
 * this beside it. `root`: where sysfs is (tests give a tree of their own).
 */
export function cpuIdle(root = '/sys'): CpuIdle {
  const cpuidle = join(root, 'devices/system/cpu/cpuidle');
  // Older kernels show current_governor only with a boot option (cpuidle_sysfs_switch), else current_governor_ro.
  const governor = sysfs(join(cpuidle, 'current_governor')) ?? sysfs(join(cpuidle, 'current_governor_ro'));
  // The parameter exists wherever the governor is built in, polling or not: it means something only in use.
  const ns =
    governor === 'haltpoll' ? sysfs(join(root, 'module/haltpoll/parameters/guest_halt_poll_ns')) : null;
  return {
    driver: sysfs(join(cpuidle, 'current_driver')),
    governor,
    haltPollNs: ns !== null && /^\d+$/.test(ns) ? Number(ns) : null,
  };
}

export function machine(): Record<string, unknown> & { cpuIdle: CpuIdle } {
  const cpus = os.cpus();
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    loadAverage: os.loadavg().map((l) => Number(l.toFixed(2))),
    cpuIdle: cpuIdle(),
    commit: git.status === 0 ? git.stdout.trim() : null,
  };
}

/** Run one case in its own process; resolves with its result line, or rejects with why it failed. */
function runOne(name: string, quick: boolean, timeoutMs: number): Promise<CaseResult> {
  const script = join(here, 'cases', `${name}.js`);
  const child = spawn(process.execPath, [script, ...(quick ? ['--quick'] : [])], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: childEnv(), // the case (and, through fixtures/cleanup.ts, what it started) ends if bench is SIGKILLed
  });
  let result: CaseResult | null = null;
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (!line.startsWith('{"case"')) return process.stderr.write(`${line}\n`);
    try {
      result = JSON.parse(line) as CaseResult;
    } catch {
      /* reported below as a missing result */
    }
  });
  return new Promise((resolvePromise, reject) => {
    let timedOut = false;
    // SIGTERM first: the case then kills its own children (fixtures/cleanup.ts); SIGKILL if it hangs.
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    }, timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new Error(`timed out after ${timeoutMs / 1000} s`));
      else if (code === 0 && result) resolvePromise(result);
      else if (code === 0) reject(new Error('exited 0 without printing a result line'));
      else reject(new Error(`exited with ${code ?? signal}`));
    });
  });
}

function cell(m: Metric, v: number): string {
  return `${fmt(v)} ${m.unit}`;
}

export function table(cases: CaseResult[]): string {
  const rows: string[][] = [['measurement', 'n', 'median', 'p99', 'vs', 'ratio', '']];
  for (const c of cases) {
    rows.push([`${c.case} — ${c.title}`]);
    for (const m of c.metrics) {
      const ref = m.ref ? c.metrics.find((r) => r.id === m.ref) : undefined;
      rows.push([
        `  ${m.label}${m.role === 'subject' ? '' : ` [${m.role}]`}`,
        String(m.n),
        cell(m, m.median),
        m.n > 1 ? cell(m, m.p99) : '',
        ref ? ref.id : '',
        m.ratio !== undefined ? `${fmt(m.ratio)}×` : '',
        m.note ?? '',
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) =>
    Math.max(...rows.filter((r) => r.length > 1).map((r) => r[i]!.length)),
  );
  return rows
    .map((r) =>
      r.length === 1
        ? r[0]!
        : r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  '),
    )
    .join('\n');
}

export async function benchCommand(argv: string[]): Promise<number> {
  const opts = parseArgs(argv);
  if (typeof opts === 'string') {
    const isHelp = opts === USAGE;
    (isHelp ? process.stdout : process.stderr).write(`${opts}\n`);
    return isHelp ? 0 : 2;
  }
  const started = new Date();
  const t0 = performance.now();
  const host = machine();
  const idle = host.cpuIdle;
  const poll = idle.haltPollNs === null ? '' : ` (halt poll ${idle.haltPollNs} ns)`;
  const head = `${host.cpu}, ${host.cores} cores, node ${host.node}, ${host.kernel}`;
  process.stdout.write(
    `devlease bench${opts.quick ? ' --quick' : ''}: ${head}${idle.driver ? `, cpuidle ${idle.driver}${poll}` : ''}\n`,
  );
  const results: CaseResult[] = [];
  const failures: { case: string; error: string }[] = [];
  for (const name of opts.only) {
    process.stdout.write(`▸ ${name}\n`);
    try {
      const r = await runOne(name, opts.quick, opts.quick ? 60_000 : 900_000);
      results.push(r);
      process.stdout.write(`  done in ${(r.wallMs / 1000).toFixed(1)} s\n`);
    } catch (err) {
      failures.push({ case: name, error: (err as Error).message });
      process.stdout.write(`  FAILED: ${(err as Error).message}\n`);
    }
  }
  const wallMs = Math.round(performance.now() - t0);
  process.stdout.write(`\n${table(results)}\n\n`);

  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const command = `devlease bench ${argv.join(' ')}`.trim();
  const subtitle = `${host.cpu}, ${host.cores} cores, node ${host.node}, ${host.kernel} — ${started.toISOString()}${opts.quick ? ' (--quick)' : ''}`;
  const report = {
    command,
    quick: opts.quick,
    startedAt: started.toISOString(),
    wallMs,
    machine: host,
    cases: results,
    failures,
  };
  const jsonPath = join(opts.out, `${stamp}.json`);
  const svgPath = join(opts.out, `${stamp}.svg`);
  writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  const svg = renderChart(results, subtitle);
  writeFileSync(svgPath, svg);
  if (opts.svg) writeFileSync(opts.svg, svg);
  process.stdout.write(`wrote ${jsonPath}\nwrote ${svgPath}${opts.svg ? `\nwrote ${opts.svg}` : ''}\n`);
  process.stdout.write(
    `${results.length} case(s) ran, ${failures.length} failed, ${(wallMs / 1000).toFixed(1)} s\n`,
  );
  for (const f of failures) process.stderr.write(`devlease bench: case ${f.case} failed: ${f.error}\n`);
  return failures.length ? 1 : 0;
}
