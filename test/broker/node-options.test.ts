// Which of the old broker's Node options an upgrade passes on to the new one
// (src/broker/handover/node-options.ts); test/upgrade/node-options.test.ts
// runs an upgrade with them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inheritedNodeOptions } from '../../src/broker/handover/node-options.js';

test('heap sizes, V8 flags and preloads are kept, in order, as written', () => {
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
    [['--inspect-brk=0', '--inspect-wait'], []],
    [['--inspect-port', '9230', '--debug-port=9231'], []],
    [['--inspect-publish-uid', 'stderr'], []],
    [['--watch', '--watch-path', '/etc/devlease', '--watch-preserve-output'], []],
    [['--test', '--test-name-pattern', 'x', '--test-only', '--test-reporter=tap'], []],
    [['-e', 'code', '--print', '1', '--input-type', 'module', '-c', '-i'], []],
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

test('a dropped option written last, its value missing, takes nothing with it', () => {
  assert.deepEqual(inheritedNodeOptions(['--max-old-space-size=64', '--inspect-port']), [
    '--max-old-space-size=64',
  ]);
});
