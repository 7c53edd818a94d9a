#!/usr/bin/env node
// Runs compiled test files (dist/<dir>/**/*.test.js) with node:test.
// Usage: node scripts/run-tests.mjs <dir> [--only substring ...]
// Node 20's `node --test` takes file lists, not globs, so we expand here.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const dir = args[0] ?? 'test';
const only = args.slice(1).filter((a) => !a.startsWith('--'));
const root = join('dist', dir);

function walk(d) {
  return readdirSync(d).flatMap((name) => {
    const p = join(d, name);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.test.js') ? [p] : [];
  });
}

let files;
try {
  files = walk(root).sort();
} catch (err) {
  console.error(`run-tests: cannot read ${root} (${err.code}); run 'npm run build:ts' first`);
  process.exit(1);
}
// Guest-side kernel tests run inside the QEMU guest (npm run test:kernel), never on the host; VM tests
// boot QEMU 11 guests (npm run test:vm); the interop suite needs the stock peers its own runner builds
// (npm run test:interop); the chaos, fuzz, fail-nth and device-failure suites run long, by their own
// scripts (npm run test:chaos / test:fuzz / test:fail-nth / test:device-failure; bounded forms in .ci/run).
// None of them is part of `npm test`.
if (dir === 'test')
  files = files.filter(
    (f) =>
      !f.includes(`${join('kernel', 'guest')}`) &&
      !f.includes(join(root, 'vm')) &&
      !f.includes(join('dist', 'test', 'interop')) &&
      !['chaos', 'fuzz', 'fail-nth', 'device-failure'].some((s) => f.includes(join('dist', 'test', s, ''))),
  );
if (only.length) files = files.filter((f) => only.some((o) => f.includes(o)));
if (files.length === 0) {
  console.error(`run-tests: no test files under ${root}`);
  process.exit(1);
}
// In `npm test` a test stuck on a lost event fails by its name after 10 min (the whole run takes ~12) instead
// of holding the suite until CI's own limit. The long suites (chaos, fuzz: their own timeouts) are left alone.
// (Node 20.11 added the flag; before it, no default.)
const timeout =
  dir === 'test' && process.allowedNodeEnvironmentFlags.has('--test-timeout')
    ? ['--test-timeout=600000']
    : [];
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...timeout, ...files], {
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
