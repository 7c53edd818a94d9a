// Every subcommand answers --help (and -h) with its usage on stdout and exit 0.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';

const bin = join(process.cwd(), 'bin/devlease.js');
const commands = [
  'sim',
  'daemon',
  'demo',
  'bench',
  'status',
  'leases',
  'clients',
  'revoke',
  'drain',
  'reset',
  'reload',
  'upgrade',
  'top',
];

for (const cmd of commands) {
  test(`devlease ${cmd} --help prints its usage and exits 0`, () => {
    for (const flag of ['--help', '-h']) {
      const r = spawnSync(process.execPath, [bin, cmd, flag], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, `${cmd} ${flag}: exit ${r.status}, stderr: ${r.stderr}`);
      assert.match(r.stdout, /usage/i, `${cmd} ${flag}: usage on stdout`);
      assert.match(r.stdout, new RegExp(`\\b${cmd}\\b`), `${cmd} ${flag}: the usage names the command`);
    }
  });
}

test('devlease --help lists every subcommand', () => {
  const r = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0);
  for (const cmd of commands) assert.match(r.stdout, new RegExp(`\\b${cmd}\\b`), cmd);
});
