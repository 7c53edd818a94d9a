// What the command line says where it cannot do anything: not on Linux, and no broker at the admin socket.
// One line naming the problem (and the socket tried), a non-zero exit, no stack trace.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { assertFailed, runCli } from './run-cli.js';

const dir = mkdtempSync(join(tmpdir(), 'devlease-usage-'));
after(() => rmSync(dir, { recursive: true, force: true }));

// Another OS, as far as the program can tell: process.platform is all devlease looks at.
const elsewhere = [
  '--import',
  'data:text/javascript,Object.defineProperty(process,"platform",{value:"darwin"})',
];

test('off Linux: each command says devlease runs on Linux only, in one line; --version still answers', async () => {
  for (const args of [['status'], ['daemon', '--device', 'vfio-user:/x'], ['sim', '--help']]) {
    const r = await runCli(args, { nodeArgs: elsewhere });
    assertFailed(r, 1, /^devlease: runs on Linux only \(.*\); this is darwin\n$/);
  }
  const v = await runCli(['--version'], { nodeArgs: elsewhere });
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /^devlease \d+\.\d+\.\d+\n$/);
});

test('admin commands and top name the socket they could not connect to, and what to check', async () => {
  const rundir = join(dir, 'no-broker');
  const status = await runCli(['status', '--rundir', rundir]);
  const admin = join(rundir, 'sa1', 'admin.sock');
  assertFailed(
    status,
    1,
    new RegExp(
      `^devlease status: cannot connect to ${admin}: connect: .*\\(no socket there: is the daemon running`,
    ),
  );
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, '');
  const top = await runCli(['top', '--admin', file]);
  assertFailed(
    top,
    1,
    new RegExp(`^devlease top: cannot connect to ${file}: connect: .*\\(nothing listens there`),
  );
});

test('sim --socket at a path a file or folder holds: says it is in the way (not "Address already in use")', async () => {
  for (const path of [join(dir, 'a-file'), dir]) {
    writeFileSync(join(dir, 'a-file'), 'kept');
    const r = await runCli(['sim', '--socket', path]);
    assertFailed(
      r,
      1,
      new RegExp(`cannot serve on ${path}: bind: ${path} is in the way: it exists and is not a socket`),
    );
  }
  assert.equal(readFileSync(join(dir, 'a-file'), 'utf8'), 'kept', 'the file is left as it was');
});

test('an argument a command does not take is a usage error, not ignored', async () => {
  assertFailed(
    await runCli(['status', 'queue-1']),
    2,
    /^devlease status: unexpected argument 'queue-1'\nusage:/,
  );
  assertFailed(
    await runCli(['revoke', 'queue-1', 'queue-2']),
    2,
    /^devlease revoke: unexpected argument 'queue-2'\n/,
  );
  // Digits past 2^53 were read rounded, and quoted as such ("got 100000000000000000000").
  const r = await runCli(['sim', '--socket', join(dir, 's.sock'), '--queues', '99999999999999999999']);
  assertFailed(
    r,
    2,
    /^devlease sim: --queues must be an integer from 1 to 1024, got '99999999999999999999'\n/,
  );
});

test('bench: an --out or --svg it cannot write is refused before any case runs (it failed at the end, with a stack)', async () => {
  const file = join(dir, 'results-file');
  writeFileSync(file, '');
  const out = await runCli(['bench', '--quick', '--only', 'idle', '--out', join(file, 'sub')]);
  assertFailed(out, 2, /^devlease bench: --out .*results-file\/sub: ENOTDIR\n$/);
  const svg = await runCli([
    'bench',
    '--quick',
    '--only',
    'idle',
    '--out',
    dir,
    '--svg',
    join(dir, 'none', 'c.svg'),
  ]);
  assertFailed(svg, 2, /^devlease bench: --svg .*none\/c\.svg: ENOENT\n$/);
  assert.equal(out.stdout + svg.stdout, '', 'no case ran');
});

test('integer options take decimal digits only: 0x4, 1e1, 4.5, " 4" and "" are usage errors naming the option', async () => {
  // Each was read through Number(): '0x4' ran 4 clients, '1e1' 10, ' 4' 4, and '' (0) a 1000 ms top interval.
  const cases: [string[], string, string][] = [];
  for (const v of ['0x4', '1e1', '4.5', ' 4', '', '+4', '99999999999999999999'])
    cases.push([['demo', '--clients', v], 'demo', `--clients must be an integer from 1 to 32, got '${v}'`]);
  cases.push([
    ['demo', '--seconds', '2.5'],
    'demo',
    "--seconds must be an integer from 2 to 3600, got '2.5'",
  ]);
  cases.push([
    ['demo', '--seconds', '0x10'],
    'demo',
    "--seconds must be an integer from 2 to 3600, got '0x10'",
  ]);
  cases.push([
    ['top', '--admin', join(dir, 'none.sock'), '--interval', '0x100'],
    'top',
    "--interval must be an integer from 100 to 3600000 (ms), got '0x100'",
  ]);
  cases.push([
    ['top', '--admin', join(dir, 'none.sock'), '--iterations', '1e0'],
    'top',
    "--iterations must be an integer from 1 to 1000000000, got '1e0'",
  ]);
  for (const v of ['0x4', '99999999999999999999'])
    cases.push([
      ['daemon', '--device-fd', v],
      'daemon',
      `--device-fd must be an inherited descriptor number >= 3, got '${v}'`,
    ]);
  for (const [args, cmd, said] of cases) {
    const r = await runCli(args);
    const escaped = said.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    assertFailed(r, 2, new RegExp(`^devlease ${cmd}: ${escaped}\\n`));
    assert.equal(r.stdout, '', `${args.join(' ')}: nothing started`);
  }
});
