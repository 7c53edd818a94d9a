// What a guest's `node --test --test-reporter=spec` output says failed (Node 20), for run-all.mjs: each
// failure line, and whether it is only a test file that did not exit in time after an AER injection ("hung at
// exit").
//
// How Node 20 reports a file whose tests all passed but whose process does not exit (something keeps its
// event loop alive, or the process is stuck in the kernel): its tests' "✔" lines as they end, then, at
// --test-timeout (the runner times each file's process with it), one line for the file itself, named by its
// absolute path, with the timeout as its error, counted 'cancelled' (not 'fail') in the summary:
//
//   ✔ broker: a fatal AER error is recovered (10.815873ms)
//   ✖ /work/main/dist/test/kernel/guest/aer.test.js (300114.556404ms)
//     'test timed out after 300000ms'
//
// A test that fails names itself ("✖ name", indented under its suite); so does one that outlives its own
// timeout inside the file's process. A file whose process ends in error is named with 'test failed'. Limit: a
// test that never ends looks the same as a file that does not exit — the file's process, whose clock starts
// first, times out before the test does (both get --test-timeout), and the test is never named — so "hung at
// exit" is what the output says, not proof that the file's tests all ended; run-all excuses it only before
// its guest's wedge.

/** The request line a guest test writes to the console for an AER error (run-guest.mjs, HOST_REQUEST). */
const AER_INJECTION = /=== DEVLEASE-HOST aer-inject [A-Z_]+ ===/;
/** A failure: "✖ name (12.3ms)". */
const FAILED = /^\s*✖ /;
/** The run's closing list of its failures, which repeats them. */
const SUMMARY = /^✖ failing tests:$/;
/** A test file's own line (its process, not one of its tests): top level, its absolute path. */
const FILE = /^✖ (\/.*\.test\.[cm]?js) \([\d.]+ms\)$/;
/** The error under a file's line when its process outlived --test-timeout. */
const TIMED_OUT = /^\s+'test timed out after \d+ms'$/;

/**
 * The failures in a guest's output lines, in order: { line (trimmed), file (the path of a test file's own
 * failure, else null), hungAtExit }. hungAtExit: a test file's process timed out — no test named — after the
 * host injected an AER error. The summary's repeats are not counted again.
 */
export function guestFailures(lines) {
  const failures = [];
  let injected = false;
  for (const [i, line] of lines.entries()) {
    if (AER_INJECTION.test(line)) injected = true;
    if (SUMMARY.test(line)) break;
    if (!FAILED.test(line)) continue;
    const file = line.match(FILE)?.[1] ?? null;
    // The error is the next line that is not blank; another console writer's line slipped in between leaves
    // the failure a real one.
    const error = lines.slice(i + 1).find((l) => l.trim() !== '') ?? '';
    failures.push({
      line: line.trim(),
      file,
      hungAtExit: injected && file !== null && TIMED_OUT.test(error),
    });
  }
  return failures;
}
