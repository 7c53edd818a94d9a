#!/usr/bin/env node
// `npm run test:device-failure`: the device-failure suite (test/device-failure):
// hang, frozen device, hang during recovery, concurrent resets, device process
// killed; detection and recovery times printed. `--rounds N` (default 3) runs
// each scenario N times; CI runs `--rounds 1`.
// Usage: node scripts/run-device-failure.mjs [--rounds N] [--only substring ...]
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let rounds = '3';
const rest = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--rounds') rounds = args[++i] ?? '';
  else rest.push(args[i]);
}
if (!/^[1-9][0-9]*$/.test(rounds)) {
  console.error(`test:device-failure: --rounds must be a positive integer, got '${rounds}'`);
  process.exit(2);
}
const r = spawnSync(
  process.execPath,
  [join(root, 'scripts', 'run-tests.mjs'), 'test/device-failure', ...rest],
  {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, DEVLEASE_DEVICE_FAILURE_ROUNDS: rounds },
  },
);
process.exit(r.status ?? 1);
