#!/usr/bin/env node
// `npm run test:vm`: virtual machines as vfio-user clients (docs/VM-TESTS.md).
// Installs or finds cached QEMU 11.1 (scripts/qemu11/install.sh) and the
// guest images (scripts/kernel-rig/build.sh vfio-user), then runs the host-side
// test files dist/test/vm/*.test.js under node --test; each boots its guests.
//
//   node test/vm/run-all.mjs [--only substring]
//
// Ends with `vm: N passed, N failed` (counted by .ci/run). Exit 0 only if all passed.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const seconds = (t0) => ((Date.now() - t0) / 1000).toFixed(1);
const t0 = Date.now();

function prepare(what, script, ...scriptArgs) {
  const t = Date.now();
  const r = spawnSync('bash', [join(projectRoot, script), ...scriptArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    console.error(`test:vm: ${script} ${scriptArgs.join(' ')} failed (status ${r.status ?? r.signal})`);
    console.log('vm: 0 passed, 1 failed');
    process.exit(1);
  }
  console.log(`test:vm: ${what} ready in ${seconds(t)} s`);
  return r.stdout.trim();
}

const qemu = prepare('QEMU 11', 'scripts/qemu11/install.sh');
prepare('guest kernel and initramfs', 'scripts/kernel-rig/build.sh', 'vfio-user');

// Written but not run by default until what they need has landed; `--only` still runs them.
const PENDING = {};

const dir = join(projectRoot, 'dist/test/vm');
let files;
try {
  files = readdirSync(dir)
    .filter((f) => f.endsWith('.test.js') && (only ? f.includes(only) : !PENDING[f]))
    .sort()
    .map((f) => relative(projectRoot, join(dir, f)));
} catch (err) {
  console.error(`test:vm: cannot read ${dir} (${err.code}): run 'npm run build:ts' first`);
  process.exit(1);
}
if (!only)
  for (const [f, why] of Object.entries(PENDING)) console.log(`test:vm: ${f} not run by default: ${why}`);
if (files.length === 0) {
  console.error(`test:vm: no *.test.js files in ${dir}`);
  process.exit(1);
}

const counts = {};
const child = spawn(process.execPath, ['--test', '--test-reporter=spec', '--test-concurrency=1', ...files], {
  cwd: projectRoot,
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, DEVLEASE_QEMU11: qemu },
});
createInterface({ input: child.stdout }).on('line', (line) => {
  const m = line.match(/^(?:ℹ|#) (pass|fail|cancelled) (\d+)$/);
  if (m) counts[m[1]] = Number(m[2]);
  process.stdout.write(`${line}\n`);
});
const status = await new Promise((res) => child.on('close', (code) => res(code ?? 1)));
const passed = counts.pass ?? 0;
const failed = (counts.fail ?? 0) + (counts.cancelled ?? 0) + (counts.pass === undefined ? 1 : 0);
console.log(`test:vm: total ${seconds(t0)} s`);
console.log(`vm: ${passed} passed, ${failed} failed`);
process.exit(status === 0 && failed === 0 ? 0 : 1);
