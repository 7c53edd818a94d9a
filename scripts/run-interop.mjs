#!/usr/bin/env node
// `npm run test:interop`: builds the stock vfio-user peers (libvfio-user's
// samples, scripts/peers/libvfio-user.sh; cached outside the clone), then runs
// test/interop with their path in DEVLEASE_LIBVFIO_USER_SAMPLES.
// Usage: node scripts/run-interop.mjs [--only substring ...]
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const build = spawnSync('bash', [join(root, 'scripts', 'peers', 'libvfio-user.sh')], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
  encoding: 'utf8',
});
const samples = build.stdout.trim().split('\n').pop();
if (build.status !== 0 || !samples) {
  console.error(
    `test:interop: building libvfio-user's samples failed (exit ${build.status ?? build.signal})`,
  );
  process.exit(1);
}
console.error(`test:interop: libvfio-user samples in ${samples}`);
const r = spawnSync(
  process.execPath,
  [join(root, 'scripts', 'run-tests.mjs'), 'test/interop', ...process.argv.slice(2)],
  {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, DEVLEASE_LIBVFIO_USER_SAMPLES: samples },
  },
);
process.exit(r.status ?? 1);
