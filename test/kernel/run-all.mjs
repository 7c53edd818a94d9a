#!/usr/bin/env node
// `npm run test:kernel`: the real-kernel VFIO tests. Installs the host tools
// if missing (scripts/kernel-rig/deps.sh), builds or finds cached both guest
// configurations, then boots each one and runs the compiled guest tests
// (dist/test/kernel/guest/*.test.js) under `node --test` inside it.
//
//   node test/kernel/run-all.mjs [legacy|iommufd ...] [--timeout SEC] [--verbose]
//
// Exit status 0 only if every configuration booted and all its tests passed.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { guestFailures } from './guest-failures.mjs';
import { buildConfig, configs, dmarFaults, projectRoot, runGuest } from './run-guest.mjs';

const args = process.argv.slice(2);
const flag = (name) => args.indexOf(name);
// Per guest. The TCG guest runs its suite in ~170-230 s on a quiet 2-core machine and took ~400 s at load 10;
// 300 s timed a healthy run out on a shared machine. 900 s still bounds a hung guest well inside CI's 90 min.
const timeoutSec = flag('--timeout') >= 0 ? Number(args[flag('--timeout') + 1]) : 900;
const verbose = flag('--verbose') >= 0;
const wanted = args.filter((a) => configs.includes(a));
const selected = wanted.length ? wanted : configs;

const guestDir = join(projectRoot, 'dist/test/kernel/guest');
let files;
try {
  files = readdirSync(guestDir)
    .filter((f) => f.endsWith('.test.js'))
    .sort()
    .map((f) => relative(projectRoot, join(guestDir, f)));
} catch (err) {
  console.error(`test:kernel: cannot read ${guestDir} (${err.code}): run 'npm run build:ts' first`);
  process.exit(1);
}
if (files.length === 0) {
  console.error(`test:kernel: no *.test.js files in ${guestDir}`);
  process.exit(1);
}

const seconds = (t0) => ((Date.now() - t0) / 1000).toFixed(1);
const t0 = Date.now();
const deps = spawnSync('bash', [join(projectRoot, 'scripts/kernel-rig/deps.sh')], { stdio: 'inherit' });
if (deps.status !== 0) {
  console.error(
    'test:kernel: scripts/kernel-rig/deps.sh failed: the host lacks QEMU or the kernel build tools',
  );
  process.exit(1);
}
console.log(`test:kernel: host tools ready in ${seconds(t0)} s`);
// Build everything before booting anything: a broken build fails fast.
for (const config of selected) {
  const tb = Date.now();
  try {
    buildConfig(config);
  } catch (err) {
    console.error(`test:kernel: ${err.message}`);
    process.exit(1);
  }
  console.log(`test:kernel: ${config} guest ready in ${seconds(tb)} s`);
}

let passed = 0;
let failed = 0;
const problems = [];
for (const config of selected) {
  console.log(`test:kernel: booting the ${config} guest: node --test ${files.join(' ')}`);
  const counts = {};
  const boot = () =>
    runGuest({
      config,
      build: false,
      timeoutSec,
      verbose,
      // A test file still running after 5 min (the longest tests take ~25 s under TCG) fails, the others go
      // on. Node 20 times each file's process with this timeout too, and its clock starts first: a stuck test
      // is reported as its file's timeout, not by its own name (guest-failures.mjs).
      nodeArgs: ['--test', '--test-reporter=spec', '--test-concurrency=1', '--test-timeout=300000', ...files],
      onLine: (line) => {
        // node:test's spec summary: "ℹ pass 5", "ℹ fail 0".
        const m = line.match(/^(?:ℹ|#) (pass|fail|cancelled) (\d+)$/);
        if (m) counts[m[1]] = Number(m[2]);
        process.stdout.write(`[${config}] ${line}\n`);
      },
    });
  let r = await boot();
  // Tests this boot reported failed as they ended (spec: "✖ name"): a hung boot prints no summary.
  let failures = guestFailures(r.output);
  // Booted once more, saying so, for what is not the tests' doing (a second time fails the suite): a TCG guest's
  // kernel can stall while it boots (an RCU stall, a timer that never fires, seen in CI with the host otherwise
  // idle), and no test ran; or QEMU itself hung: at the timeout its own monitor did not answer. A guest that hung
  // while QEMU answered fails, with what it said when asked (run-guest.mjs, askWhereStuck); so does one where a
  // test had failed before QEMU hung (what failed may be what hung it). And a guest whose kernel stopped right
  // after the host injected an AER error — silent since, QEMU answering, SysRq unanswered — as seen in CI
  // (docs/KERNEL-TESTS.md, "A guest that stops after an AER injection"): a devlease process blocked in the kernel
  // would have been listed by SysRq, and fails the suite.
  const again = r.neverStarted || r.qemuStuck || r.guestWedged;
  // Before that stop, files whose tests had all passed may have failed only by not exiting: Node 20 then
  // times the file's process out ("✖ <file> (300114.556404ms)", 'test timed out', no test named), as CI saw
  // in the legacy guest for two files after an injection, before its kernel stopped (docs/KERNEL-TESTS.md). A
  // process that cannot end is likely the kernel already going wrong, and the second boot runs those files
  // again: so they do not keep the guest from it, and the log says so. Any other failure does, named. Only
  // when the guest then stopped: in a guest that went on, a file that hangs at exit fails the suite like any
  // other failure. (Node's output does not tell it from a test that never ended, guest-failures.mjs; a second
  // stop still fails the suite.)
  const hungAtExit = r.guestWedged ? failures.filter((f) => f.hungAtExit) : [];
  const blocking = failures.filter((f) => !hungAtExit.includes(f));
  const hungFiles = hungAtExit.map((f) => relative(projectRoot, f.file)).join(', ');
  const hungNote = hungAtExit.length
    ? `${hungAtExit.length} file${hungAtExit.length > 1 ? 's' : ''} hung at exit after the injection (${hungFiles})`
    : '';
  if (again && blocking.length)
    problems.push(
      `${config}: failed before the guest or QEMU hung, not booted again:\n` +
        [...blocking.map((f) => f.line), ...(hungNote ? [`and ${hungNote}`] : [])].join('\n'),
    );
  else if (again) {
    const why = r.neverStarted
      ? 'the guest never reached its tests'
      : r.qemuStuck
        ? 'QEMU itself hung (its monitor did not answer)'
        : "the guest's kernel stopped after an AER injection (silent, SysRq unanswered, QEMU answering)";
    console.log(
      `test:kernel: ${config}: ${why}${hungNote ? `; ${hungNote}` : ''}; booting it again once:\n${r.error}`,
    );
    for (const k of Object.keys(counts)) delete counts[k];
    r = await boot();
    failures = guestFailures(r.output);
  }
  const faults = dmarFaults(r.dmesg);
  if (faults.length)
    console.log(`[${config}] dmesg: ${faults.length} DMAR fault line(s):\n${faults.join('\n')}`);
  if (r.error) problems.push(r.error);
  else if (r.status !== 0) problems.push(`${config}: guest tests exited with status ${r.status}`);
  if (counts.pass === undefined) problems.push(`${config}: no node:test summary in the guest output`);
  passed += counts.pass ?? 0;
  // A guest that hung printed no summary: its failures are the ones it reported as they ended, and the hang
  // itself is one (a boot that hung with nothing failed before counted 0 failed: CI's summary read green).
  failed +=
    counts.fail !== undefined
      ? counts.fail + (counts.cancelled ?? 0)
      : Math.max(failures.length, r.error || r.status !== 0 ? 1 : 0);
  console.log(
    `test:kernel: ${config}: ${counts.pass ?? 0} passed, ${counts.fail ?? 0} failed in ${r.seconds.toFixed(1)} s`,
  );
}

for (const p of problems) console.error(`test:kernel: ${p}`);
console.log(`test:kernel: total ${seconds(t0)} s`);
console.log(`kernel: ${passed} passed, ${failed} failed`);
process.exit(problems.length || failed ? 1 : 0);
