// The kernel rig's reading of a guest's node:test output (test/kernel/guest-failures.mjs): which failures are
// only a test file that did not exit in time after an AER injection ("hung at exit"), which the rig does not
// let keep a guest whose kernel then stopped from its second boot (run-all.mjs), and which are real failures,
// which do.
//
// The node:test lines are Node 20.20's own, captured on a host with the flags run-all.mjs gives the guest
// (`node --test --test-reporter=spec --test-concurrency=1 --test-timeout=300000`, NO_COLOR=1; a few with a
// shorter timeout, said where) from small files: ones whose tests pass and then keep the event loop alive
// (setInterval), one with a failing assertion, one whose second test never ends, ...; timings as printed. The
// `=== DEVLEASE-HOST aer-inject ... ===` and `[host] ...` lines are the rig's (run-guest.mjs), as a guest's
// AER test asks for an error.
import assert from 'node:assert/strict';
import { test } from 'node:test';

interface GuestFailure {
  line: string;
  file: string | null;
  hungAtExit: boolean;
}
// The module is the rig's plain .mjs, next to run-all.mjs; this test runs from dist/test/kernel/.
const { guestFailures } = (await import(
  new URL('../../../test/kernel/guest-failures.mjs', import.meta.url).href
)) as {
  guestFailures: (lines: string[]) => GuestFailure[];
};

const GUEST = '/tmp/ntrepro/proj/dist/test/kernel/guest';

const injection = ['=== DEVLEASE-HOST aer-inject POISON_TLP ===', '[host] aer-inject POISON_TLP: ok'];

// Two files whose tests all passed, each timed out at exit (--test-timeout=300000).
const hungAtExit = [
  '✔ broker: an AER error of the leased device reaches it (1.267038ms)',
  '✔ broker: a fatal AER error is recovered (10.815873ms)',
  `✖ ${GUEST}/aer.test.js (300114.556404ms)`,
  "  'test timed out after 300000ms'",
  '',
  '✔ broker: the generic driver over edu (1.232823ms)',
  `✖ ${GUEST}/edu-generic.test.js (300109.364975ms)`,
  "  'test timed out after 300000ms'",
  '',
];

// A test that failed (its file's process then exits 1: the file itself is not named).
const realFailure = [
  '✔ edu: passes (1.828781ms)',
  '✖ edu: really fails (1.992173ms)',
  '  AssertionError [ERR_ASSERTION]: Expected values to be strictly equal:',
  '  ',
  '  1 !== 2',
  '  ',
  `      at TestContext.<anonymous> (file://${GUEST}/edu.test.js:4:42)`,
  '      at Test.runInAsyncScope (node:async_hooks:206:9)',
  '      at Test.run (node:internal/test_runner/test:796:25)',
  '      at Test.processPendingSubtests (node:internal/test_runner/test:526:18)',
  '      at Test.postRun (node:internal/test_runner/test:889:19)',
  '      at Test.run (node:internal/test_runner/test:835:12)',
  '      at async Test.processPendingSubtests (node:internal/test_runner/test:526:7) {',
  '    generatedMessage: true,',
  "    code: 'ERR_ASSERTION',",
  '    actual: 1,',
  '    expected: 2,',
  "    operator: 'strictEqual'",
  '  }',
  '',
];

// The run's closing lines (from a run with --test-timeout=5000).
const summary = (files: string[]) => [
  'ℹ tests 10',
  'ℹ suites 0',
  'ℹ pass 6',
  'ℹ fail 1',
  'ℹ cancelled 3',
  'ℹ skipped 0',
  'ℹ todo 0',
  'ℹ duration_ms 15336.702889',
  '',
  '✖ failing tests:',
  '',
  ...files.flatMap((f) => [
    `test at dist/test/kernel/guest/${f}:1:1`,
    `✖ ${GUEST}/${f} (5016.188914ms)`,
    "  'test timed out after 5000ms'",
    '',
  ]),
];

test('files whose tests passed and that timed out at exit after an AER injection are hung at exit', () => {
  assert.deepEqual(guestFailures([...injection, ...hungAtExit]), [
    { line: `✖ ${GUEST}/aer.test.js (300114.556404ms)`, file: `${GUEST}/aer.test.js`, hungAtExit: true },
    {
      line: `✖ ${GUEST}/edu-generic.test.js (300109.364975ms)`,
      file: `${GUEST}/edu-generic.test.js`,
      hungAtExit: true,
    },
  ]);
});

test('a failed test is a real failure, after an injection or not', () => {
  for (const lines of [realFailure, [...injection, ...realFailure]])
    assert.deepEqual(guestFailures(lines), [
      { line: '✖ edu: really fails (1.992173ms)', file: null, hungAtExit: false },
    ]);
});

test('mixed: files hung at exit and a failed test are told apart, in order', () => {
  const failures = guestFailures([...injection, ...hungAtExit, ...realFailure]);
  assert.deepEqual(
    failures.map((f) => [f.line, f.hungAtExit]),
    [
      [`✖ ${GUEST}/aer.test.js (300114.556404ms)`, true],
      [`✖ ${GUEST}/edu-generic.test.js (300109.364975ms)`, true],
      ['✖ edu: really fails (1.992173ms)', false],
    ],
  );
});

test('a file that timed out before any AER injection is a real failure', () => {
  const failures = guestFailures([...hungAtExit, ...injection]);
  assert.deepEqual(
    failures.map((f) => f.hungAtExit),
    [false, false],
  );
});

test("a file whose process failed ('test failed': crashed, threw at its top level) is a real failure", () => {
  // --test-timeout=5000.
  const failures = guestFailures([
    ...injection,
    '✔ crash: passes then the process dies (1.575676ms)',
    `✖ ${GUEST}/crash.test.js (191.74567ms)`,
    "  'test failed'",
    '',
  ]);
  assert.deepEqual(failures, [
    { line: `✖ ${GUEST}/crash.test.js (191.74567ms)`, file: `${GUEST}/crash.test.js`, hungAtExit: false },
  ]);
});

test("a test's own timeout, and tests cancelled with their suite, are real failures (named tests)", () => {
  // describe('a suite', { timeout: 500 }) with a test that never ends; test('own timeout', { timeout: 300 });
  // --test-timeout=5000.
  const failures = guestFailures([
    ...injection,
    '▶ a suite',
    '  ✔ inner passes (0.834382ms)',
    '  ✖ inner never ends (501.918027ms)',
    "    'test did not finish before its parent and was cancelled'",
    '',
    '  ✖ inner after it',
    "    'test did not finish before its parent and was cancelled'",
    '',
    '✖ a suite (503.878397ms)',
    '',
    "  'test timed out after 500ms'",
    '',
    '✖ own timeout (301.761854ms)',
    "  'test timed out after 300ms'",
    '',
    `✖ ${GUEST}/nested.test.js (5010.69605ms)`,
    "  'test timed out after 5000ms'",
    '',
  ]);
  assert.deepEqual(
    failures.map((f) => [f.line, f.hungAtExit]),
    [
      ['✖ inner never ends (501.918027ms)', false],
      ['✖ inner after it', false],
      ['✖ a suite (503.878397ms)', false],
      ['✖ own timeout (301.761854ms)', false],
      // Its tests did not all pass, but Node 20 names them on their own lines: those are what keep the guest.
      [`✖ ${GUEST}/nested.test.js (5010.69605ms)`, true],
    ],
  );
});

test('the closing "failing tests" list repeats the failures: not counted again', () => {
  const failures = guestFailures([
    ...injection,
    ...hungAtExit,
    ...summary(['aer.test.js', 'edu-generic.test.js']),
  ]);
  assert.equal(failures.length, 2);
});

test('a line slipped in between a file and its timeout (a console writer) leaves it a real failure', () => {
  const failures = guestFailures([
    ...injection,
    `✖ ${GUEST}/aer.test.js (300114.556404ms)`,
    '[  412.345678] pcieport 0000:00:03.0: AER: device recovery failed',
    "  'test timed out after 300000ms'",
  ]);
  assert.deepEqual(
    failures.map((f) => f.hungAtExit),
    [false],
  );
});

test('known limit: a test that never ends looks like a file that does not exit (Node names the file)', () => {
  // The file's second test never ended; its process's timeout (started first) fired before the test's own.
  const failures = guestFailures([
    ...injection,
    '✔ ivshmem: passes (1.901228ms)',
    `✖ ${GUEST}/ivshmem.test.js (300005.371556ms)`,
    "  'test timed out after 300000ms'",
    '',
  ]);
  assert.deepEqual(
    failures.map((f) => f.hungAtExit),
    [true],
  );
});
