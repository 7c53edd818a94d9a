// Which of the old broker's Node options an upgrade passes on to the new one, on its command line and in
// NODE_OPTIONS (src/broker/handover/node-options.ts); test/upgrade/node-options.test.ts runs an upgrade with
// them. The option lists are what Node 20 puts in process.execArgv (a value written apart is its own element).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  inheritedEnv,
  inheritedNodeOptions,
  joinNodeOptions,
  splitNodeOptions,
} from '../../src/broker/handover/node-options.js';

test('heap sizes, V8 flags and preloads are kept, in order, with their values', () => {
  const argv = [
    '--min-semi-space-size=16',
    '--max-old-space-size=512',
    '-r',
    '/opt/agent.cjs',
    '--import=/opt/hook.mjs',
    '--cpu-prof',
    '--title',
    'broker',
  ];
  assert.deepEqual(inheritedNodeOptions(argv), argv);
  assert.deepEqual(inheritedNodeOptions([]), []);
});

test('the inspector, watch mode and the other run modes are dropped, with their values', () => {
  const cases: [string[], string[]][] = [
    [['--inspect'], []],
    [['--inspect=127.0.0.1:9229'], []],
    [['--inspect-brk=0', '--inspect-wait', '--inspect-brk-node'], []],
    [['--inspect-port', '9230', '--debug-port=9231'], []],
    [['--inspect-publish-uid', 'stderr'], []],
    // Node reads `_` as `-` in a name.
    [['--inspect_port', '0', '--inspect', '--debug_port', '1', '--inspect_brk=0'], []],
    [['--watch', '--watch-path', '/etc/devlease', '--watch-preserve-output'], []],
    [['--test', '--test-name-pattern', 'x', '--test-coverage-lines', '80', '--test-reporter=tap'], []],
    [['-e', 'code', '--print', '1', '-pe', '2', '--input-type', 'module', '-c', '-i'], []],
    [
      [
        '--min-semi-space-size=16',
        '--inspect-port',
        '9230',
        '-r',
        'a.cjs',
        '--inspect',
        '--stack-trace-limit=50',
      ],
      ['--min-semi-space-size=16', '-r', 'a.cjs', '--stack-trace-limit=50'],
    ],
  ];
  for (const [argv, kept] of cases) assert.deepEqual(inheritedNodeOptions(argv), kept, JSON.stringify(argv));
});

test('NODE_OPTIONS is split as Node splits it, and joined back to the same options', () => {
  const value = '--max-old-space-size=64  --title "a b" --require "/opt/x \\"y\\".cjs" --inspect-port 0';
  const options = [
    '--max-old-space-size=64',
    '--title',
    'a b',
    '--require',
    '/opt/x "y".cjs',
    '--inspect-port',
    '0',
  ];
  assert.deepEqual(splitNodeOptions(value), options);
  assert.deepEqual(splitNodeOptions(joinNodeOptions(options)), options);
  assert.throws(() => splitNodeOptions('--title "a'), /unterminated quote/);
  // Node's own reading of the joined value, as the new broker's Node will read it.
  const seen = execFileSync(process.execPath, ['-p', 'process.title'], {
    env: { ...process.env, NODE_OPTIONS: joinNodeOptions(['--title', 'a "b" \\c']) },
    encoding: 'utf8',
  });
  assert.equal(seen.trim(), 'a "b" \\c');
});

test("a word after an option written with = is not its value; a V8 flag's value written apart is kept", () => {
  // In NODE_OPTIONS Node stops reading at a stray word: kept, so the new broker's Node stops there too.
  assert.deepEqual(inheritedNodeOptions(['--inspect-port=0', 'stray', '--title=x']), ['stray', '--title=x']);
  assert.deepEqual(inheritedNodeOptions(['--stack-trace-limit', '-1', '--inspect']), [
    '--stack-trace-limit',
    '-1',
  ]);
  assert.deepEqual(inheritedNodeOptions(['--max-old-space-size=64', '--inspect-port']), [
    '--max-old-space-size=64',
  ]);
});

test("the new broker's environment: NODE_OPTIONS filtered, left empty when nothing is left", () => {
  const env = {
    PATH: '/usr/bin',
    NODE_OPTIONS: '--inspect-brk=0 --max-old-space-size=64 --require "/a b.cjs"',
  };
  assert.deepEqual(inheritedEnv(env), {
    PATH: '/usr/bin',
    NODE_OPTIONS: '--max-old-space-size=64 --require "/a b.cjs"',
  });
  assert.equal(
    env.NODE_OPTIONS.startsWith('--inspect-brk'),
    true,
    "the broker's own environment is left alone",
  );
  assert.deepEqual(inheritedEnv({ PATH: '/usr/bin', NODE_OPTIONS: '--inspect --inspect-port 0' }), {
    PATH: '/usr/bin',
    NODE_OPTIONS: '',
  });
  const none = { PATH: '/usr/bin' };
  assert.deepEqual(inheritedEnv(none), none);
  // A NODE_OPTIONS Node could not have read goes on as it is (this process would not have started with it).
  assert.equal(inheritedEnv({ NODE_OPTIONS: '--title "a' }).NODE_OPTIONS, '--title "a');
  assert.throws(() => splitNodeOptions('--title "a\\'), /ends in an escape/);
});

test('NODE_OPTIONS filtered to nothing stays set: an --env-file on the command line cannot bring it back', () => {
  const dir = mkdtempSync(join(tmpdir(), 'devlease-env-file-'));
  try {
    const file = join(dir, 'broker.env');
    writeFileSync(file, 'NODE_OPTIONS="--title=from-the-env-file"\n');
    const run = (env: NodeJS.ProcessEnv) =>
      execFileSync(process.execPath, [`--env-file=${file}`, '-p', 'process.title'], {
        env,
        encoding: 'utf8',
      }).trim();
    const { NODE_OPTIONS: _, ...withoutOptions } = process.env;
    assert.equal(
      run(withoutOptions),
      'from-the-env-file',
      'unset, Node reads NODE_OPTIONS from the env file',
    );
    // Node's own title, as without any NODE_OPTIONS: the file's is not read.
    const plain = execFileSync(process.execPath, ['-p', 'process.title'], {
      env: withoutOptions,
      encoding: 'utf8',
    });
    assert.equal(run(inheritedEnv({ ...withoutOptions, NODE_OPTIONS: '--inspect-port=0' })), plain.trim());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
